"""committee.v1 messages as Python objects: framing, checks, encodings.

A message is a list of frames: frame 0 is a packed committee.v1.Envelope (the
protobuf module committee_pb2 is generated from proto/ by `make python` into
build/python, never committed), then one raw frame per tensor of a BatchReply or
HeadReply.  This module packs and unpacks them and checks what a peer could get
wrong, raising WireError with the committee status code ("FORMAT", "VERSION",
"TOO_LARGE", ...) and a sentence naming the field, the way common/cm_wire.c does, so
a teacher can answer with an Error and go on serving.  The rules are written down in
proto/README.md.
"""
import os
import sys

import numpy as np

VERSION_MAJOR = 1
VERSION_MINOR = 2  # 1: heads; 2: the valid and transfer splits, Hello.splits
MAX_TENSORS = 16
MAX_OUTPUTS = 16
MAX_STRING = 1024
MAX_FRAMES = 1 + MAX_TENSORS
MAX_DIMS = 8

CODES = ("NOMEM", "IO", "NOT_FOUND", "FORMAT", "INVALID_ARG", "SHAPE", "VERSION", "TOO_LARGE",
         "OUT_OF_RANGE", "MISMATCH", "BUSY", "TIMEOUT", "UNAVAILABLE", "PROTOCOL", "INTERNAL",
         "CANCELLED", "UNAUTHORIZED")


def _import_pb2():
    try:
        import committee_pb2
        return committee_pb2
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("COMMITTEE_PB2_DIR", ""),
                  os.path.join(here, "..", "..", "build", "python")]
    for directory in candidates:
        if directory and os.path.exists(os.path.join(directory, "committee_pb2.py")):
            sys.path.insert(0, os.path.abspath(directory))
            import committee_pb2
            return committee_pb2
    raise ImportError("committee_pb2 is missing: run `make python` (it generates it from "
                      "proto/committee.proto into build/python) or set COMMITTEE_PB2_DIR")


pb = _import_pb2()

SPLITS = {"train": pb.SPLIT_TRAIN, "test": pb.SPLIT_TEST, "valid": pb.SPLIT_VALID,
          "transfer": pb.SPLIT_TRANSFER}
SPLIT_NAMES = {value: name for name, value in SPLITS.items()}
ENCODINGS = {"f32": pb.ENCODING_F32, "f16": pb.ENCODING_F16, "bf16": pb.ENCODING_BF16}
ENCODING_BYTES = {pb.ENCODING_F32: 4, pb.ENCODING_F16: 2, pb.ENCODING_BF16: 2,
                  pb.ENCODING_I32: 4}
ROLES = {"foundation": pb.ROLE_FOUNDATION, "complementary": pb.ROLE_COMPLEMENTARY}


class WireError(Exception):
    """A message this side refuses: `code` is a committee status name, `args[0]` a sentence."""

    def __init__(self, code, sentence, request_id=0):
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence
        self.request_id = request_id


def clip_utf8(text, limit=MAX_STRING):
    """`text` cut to at most `limit` bytes of UTF-8 without splitting a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def shown(value, limit=64):
    """A peer-provided string, safe to quote in a sentence: printable, short, valid UTF-8."""
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- half and bfloat16

def f32_to_f16(values):
    """float32 -> IEEE binary16 bytes, round to nearest even (NumPy's cast is exactly that)."""
    return np.ascontiguousarray(values, dtype=np.float32).astype("<f2")


def f16_to_f32(data):
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


def f32_to_bf16(values):
    """float32 -> bfloat16 as uint16, round to nearest even; NaN stays a quiet NaN."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded.astype("<u2")


def bf16_to_f32(data):
    return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def encode_floats(values, encoding):
    """A float32 array as the bytes of `encoding` (a pb ENCODING_* value)."""
    if encoding == pb.ENCODING_F32:
        return np.ascontiguousarray(values, dtype="<f4")
    if encoding == pb.ENCODING_F16:
        return f32_to_f16(values)
    return f32_to_bf16(values)


def decode_floats(data, encoding, shape):
    if encoding == pb.ENCODING_F32:
        values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    elif encoding == pb.ENCODING_F16:
        values = f16_to_f32(data)
    elif encoding == pb.ENCODING_BF16:
        values = bf16_to_f32(data)
    else:
        raise WireError("FORMAT", f"a float tensor cannot travel as encoding {encoding}")
    return values.reshape(shape)


# ---------------------------------------------------------------- packing

def envelope(request_id=0, **body):
    """An Envelope at this side's version with one body field set, e.g. bye=pb.Bye(...)."""
    message = pb.Envelope(version_major=VERSION_MAJOR, version_minor=VERSION_MINOR,
                          request_id=request_id)
    for field, value in body.items():
        getattr(message, field).CopyFrom(value)
    return message


def error_message(request_id, code, sentence):
    return envelope(request_id, error=pb.Error(code=code, message=clip_utf8(sentence)))


def pack(message, frames=()):
    """The frames of a message: its packed header, then the tensor frames (buffers)."""
    return [message.SerializeToString(), *frames]


# ---------------------------------------------------------------- receiving

def _check_string(owner, field, value, required):
    if len(value.encode("utf-8")) > MAX_STRING:
        raise WireError("TOO_LARGE", f"{owner} field {field} is longer than {MAX_STRING} bytes")
    if required and not value:
        raise WireError("FORMAT", f"{owner} field {field} is empty")


def _check_sha256(owner, field, value):
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise WireError("FORMAT", f'{owner} field {field} is "{shown(value, 70)}", not 64 '
                                  "lowercase hex digits")


def _check_unique(owner, what, names):
    seen = set()
    for name in names:
        if name in seen:
            raise WireError("FORMAT", f"{owner} names {what} '{shown(name)}' twice")
        seen.add(name)


def check_hello(hello, max_bytes):
    """Checks a received Hello as cm_wire does (both peer kinds)."""
    teacher = hello.peer_kind == pb.PEER_KIND_TEACHER
    if not teacher and hello.peer_kind != pb.PEER_KIND_TRAINER:
        raise WireError("FORMAT", f"Hello field peer_kind is {hello.peer_kind}; expected teacher "
                                  "or trainer")
    _check_string("Hello", "peer_name", hello.peer_name, True)
    _check_string("Hello", "model_id", hello.model_id, teacher)
    _check_string("Hello", "view", hello.view, teacher)
    _check_string("Hello", "dataset_name", hello.dataset_name, teacher)
    if teacher or hello.dataset_fingerprint:
        _check_sha256("Hello", "dataset_fingerprint", hello.dataset_fingerprint)
    if teacher or hello.model_sha256:
        _check_sha256("Hello", "model_sha256", hello.model_sha256)
    if (hello.role not in (pb.ROLE_FOUNDATION, pb.ROLE_COMPLEMENTARY) if teacher
            else hello.role != pb.ROLE_UNSPECIFIED):
        raise WireError("FORMAT", f"Hello field role is {hello.role}; a teacher is foundation or "
                                  "complementary, a trainer has none")
    if hello.classes < (1 if teacher else 0):
        raise WireError("FORMAT", f"Hello field classes is {hello.classes}")
    if len(hello.outputs) < (1 if teacher else 0) or len(hello.outputs) > MAX_OUTPUTS:
        raise WireError("FORMAT", f"Hello lists {len(hello.outputs)} outputs")
    for output in hello.outputs:
        _check_string("Hello output", "name", output.name, True)
        if output.dtype not in (pb.DTYPE_F32, pb.DTYPE_I32):
            raise WireError("FORMAT", f"Hello output '{shown(output.name)}' has an unknown dtype")
        if not 1 <= len(output.shape) <= MAX_DIMS or min(output.shape) < 1:
            raise WireError("FORMAT", f"Hello output '{shown(output.name)}' has a bad shape")
    names = [output.name for output in hello.outputs]
    _check_unique("Hello", "output", names)
    if len(hello.heads) > MAX_OUTPUTS:
        raise WireError("FORMAT", f"Hello lists {len(hello.heads)} heads")
    for head in hello.heads:
        if head not in names:
            raise WireError("FORMAT", f"Hello lends a head for '{shown(head)}', which is not one "
                                      "of the outputs it lists")
    _check_unique("Hello", "head", list(hello.heads))
    known = [SPLIT_NAMES[value] for value in hello.splits if value in SPLIT_NAMES]
    _check_unique("Hello", "split", known)  # values a newer peer added are skipped
    if not hello.HasField("limits"):
        raise WireError("FORMAT", "Hello has no limits")
    limits = hello.limits
    if min(limits.max_examples_per_request, limits.max_message_bytes,
           limits.max_in_flight_requests) < 1:
        raise WireError("FORMAT", "Hello limits must all be at least 1 (max_examples "
                                  f"{limits.max_examples_per_request}, max_message_bytes "
                                  f"{limits.max_message_bytes}, max_in_flight "
                                  f"{limits.max_in_flight_requests})")


def check_batch_request(request, max_examples):
    if request.split not in SPLIT_NAMES:
        raise WireError("FORMAT", f"BatchRequest field split is {request.split}; expected train, "
                                  "test, valid or transfer")
    count = len(request.example_ids)
    if count < 1:
        raise WireError("FORMAT", "BatchRequest has no example ids")
    if count > max_examples:
        raise WireError("TOO_LARGE", f"BatchRequest has {count} example ids; this peer accepts "
                                     f"at most {max_examples}")
    ids = np.asarray(request.example_ids, dtype=np.int64)
    if ids.min() < 0:
        position = int(np.argmax(ids < 0))
        raise WireError("OUT_OF_RANGE", f"example id {ids[position]} (position {position}) of "
                                        "BatchRequest is negative")
    if not 1 <= len(request.outputs) <= MAX_OUTPUTS:
        raise WireError("FORMAT", f"BatchRequest names {len(request.outputs)} outputs; it must "
                                  f"name 1 to {MAX_OUTPUTS}")
    for name in request.outputs:
        _check_string("BatchRequest", "outputs", name, True)
    _check_unique("BatchRequest", "output", list(request.outputs))
    if request.encoding not in (pb.ENCODING_F32, pb.ENCODING_F16, pb.ENCODING_BF16):
        raise WireError("FORMAT", f"BatchRequest field encoding is {request.encoding}; expected "
                                  "F32, F16 or BF16")
    return ids


def decode(frames, max_message_bytes, max_examples=1 << 20):
    """Parses received frames (routing id already removed) into (Envelope, tensor frames).
    Raises WireError; its request_id is set when the header parsed."""
    if not frames or len(frames[0]) == 0:
        raise WireError("FORMAT", "malformed header: the message has no header frame or an "
                                  "empty one")
    if len(frames) > MAX_FRAMES:
        raise WireError("TOO_LARGE", f"message has {len(frames)} frames; at most {MAX_FRAMES} "
                                     "are allowed")
    total = sum(len(frame) for frame in frames)
    if total > max_message_bytes:
        raise WireError("TOO_LARGE", f"message of {total} bytes exceeds the limit of "
                                     f"{max_message_bytes} bytes")
    message = pb.Envelope()
    try:
        message.ParseFromString(bytes(frames[0]))
    except Exception:  # DecodeError, or invalid UTF-8 in a string field
        raise WireError("FORMAT", f"malformed header: frame 0 ({len(frames[0])} bytes) is not a "
                                  "committee.v1.Envelope") from None
    request_id = message.request_id
    try:
        if message.version_major != VERSION_MAJOR:
            raise WireError("VERSION", f"peer speaks protocol version {message.version_major}."
                                       f"{message.version_minor} but this side speaks "
                                       f"{VERSION_MAJOR}.{VERSION_MINOR}")
        kind = message.WhichOneof("body")
        if kind is None:
            raise WireError("FORMAT", "header has no body: it is neither Hello, BatchRequest, "
                                      "BatchReply, Heartbeat, Error, Bye, HeadRequest nor "
                                      "HeadReply")
        tensors = frames[1:]
        if kind not in ("batch_reply", "head_reply") and tensors:
            raise WireError("FORMAT", f"a {kind} carries no tensor frames, but {len(tensors)} "
                                      "followed it")
        if kind in ("batch_request", "head_request", "batch_reply", "head_reply") \
                and request_id == 0:
            raise WireError("FORMAT", f"{kind} has request id 0; requests and replies need an id")
        if kind == "hello":
            check_hello(message.hello, max_message_bytes)
        elif kind == "batch_request":
            check_batch_request(message.batch_request, max_examples)
        elif kind == "head_request":
            _check_string("HeadRequest", "feature", message.head_request.feature, True)
        elif kind == "error":
            _check_string("Error", "code", message.error.code, True)
            if message.error.code == "OK":
                raise WireError("FORMAT", 'Error field code is "OK", which is not a failure')
        elif kind == "batch_reply":
            check_batch_reply(message.batch_reply, tensors)
        elif kind == "head_reply":
            check_head_reply(message.head_reply, tensors)
    except WireError as error:
        error.request_id = request_id
        raise
    return message, tensors


def _check_desc_frame(desc, frame):
    elements = 1
    for dim in desc.shape:
        elements *= dim
    if not 1 <= len(desc.shape) <= MAX_DIMS or min(desc.shape) < 1:
        raise WireError("FORMAT", f"tensor '{shown(desc.name)}' has a bad shape {list(desc.shape)}")
    if desc.encoding not in ENCODING_BYTES:
        raise WireError("FORMAT", f"tensor '{shown(desc.name)}' has unknown encoding "
                                  f"{desc.encoding}")
    need = elements * ENCODING_BYTES[desc.encoding]
    if desc.byte_length != len(frame) or need != len(frame):
        raise WireError("FORMAT", f"tensor '{shown(desc.name)}' promises {desc.byte_length} bytes "
                                  f"and its frame has {len(frame)}, but its shape needs {need}")


def check_batch_reply(reply, tensors):
    if len(reply.tensors) != len(tensors):
        raise WireError("FORMAT", f"BatchReply describes {len(reply.tensors)} tensors but "
                                  f"{len(tensors)} tensor frames followed")
    if not 1 <= len(tensors) <= MAX_TENSORS:
        raise WireError("FORMAT", f"BatchReply describes {len(tensors)} tensors")
    seen = set()
    for desc, frame in zip(reply.tensors, tensors):
        _check_desc_frame(desc, frame)
        if desc.shape[0] != len(reply.example_ids):
            raise WireError("SHAPE", f"tensor '{shown(desc.name)}' has {desc.shape[0]} rows but "
                                     f"the reply answers {len(reply.example_ids)} examples")
        if (desc.name, desc.layout) in seen:
            raise WireError("FORMAT", f"BatchReply carries tensor '{shown(desc.name)}' twice")
        seen.add((desc.name, desc.layout))


def check_head_reply(reply, tensors):
    if reply.kind != pb.HEAD_KIND_DENSE:
        raise WireError("FORMAT", f"HeadReply has unsupported head kind {reply.kind}")
    if len(reply.tensors) != 2 or len(tensors) != 2:
        raise WireError("FORMAT", "a dense HeadReply has exactly two tensors, weight and bias")
    for desc, frame, name, ndim in zip(reply.tensors, tensors, ("weight", "bias"), (2, 1)):
        if desc.name != name or len(desc.shape) != ndim or desc.encoding != pb.ENCODING_F32:
            raise WireError("FORMAT", f"HeadReply tensor '{shown(desc.name)}' is not a dense F32 "
                                      f"{name}")
        _check_desc_frame(desc, frame)
    if reply.tensors[0].shape[0] != reply.tensors[1].shape[0]:
        raise WireError("SHAPE", "HeadReply weight and bias disagree on the classes")


def reply_tensors(reply, tensors):
    """A checked BatchReply's tensors as arrays: {name: array} for dense outputs and
    {name: {"values", "indices", "tail"}} for top-k logits."""
    out = {}
    for desc, frame in zip(reply.tensors, tensors):
        shape = tuple(desc.shape)
        if desc.encoding == pb.ENCODING_I32:
            array = np.frombuffer(frame, dtype="<i4").astype(np.int32).reshape(shape)
        else:
            array = decode_floats(frame, desc.encoding, shape)
        if desc.layout == pb.LAYOUT_DENSE:
            out[desc.name] = array
        else:
            part = {pb.LAYOUT_TOPK_VALUES: "values", pb.LAYOUT_TOPK_INDICES: "indices",
                    pb.LAYOUT_TAIL_MASS: "tail"}[desc.layout]
            out.setdefault(desc.name, {})[part] = array
    return out
