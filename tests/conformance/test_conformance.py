"""committee.v1 conformance: every rule of proto/README.md that a teacher must follow.

Each test talks to the teacher through raw DEALER sockets (committee.Client with its
send/receive primitives) and names the README section it checks.  Tests marked as
expected failures for the C teacher name the rule it does not follow yet.
"""
import hashlib
import os
import time

import numpy as np
import pytest
import zmq

import committee
from committee import wire
from committee.wire import pb

ROUNDS_TIMEOUT = 60.0  # generous: the machine is shared; only catches hangs


def client(target, **options):
    options.setdefault("timeout_ms", 30000)
    return committee.Client(target.endpoint, name="conformance", **options)


def trainer_hello(**fields):
    hello = pb.Hello(peer_kind=pb.PEER_KIND_TRAINER, peer_name="conformance",
                     limits=pb.Limits(max_examples_per_request=1 << 20,
                                      max_message_bytes=1 << 30, max_in_flight_requests=8))
    for name, value in fields.items():
        setattr(hello, name, value)
    return hello


def batch_request(ids=(0, 1, 2), outputs=("logits",), split=pb.SPLIT_TRAIN,
                  encoding=pb.ENCODING_F32, top_k=0):
    return pb.BatchRequest(split=split, example_ids=list(ids), outputs=list(outputs),
                           encoding=encoding, top_k=top_k)


def expect_error(connection, request_id, code):
    message, tensors = connection.wait_for(request_id) if request_id else connection.receive()
    assert message.WhichOneof("body") == "error", f"expected Error{{{code}}}, got {message}"
    assert message.error.code == code, f"expected {code}, got {message.error}"
    assert message.request_id == request_id
    assert not tensors
    return message.error


def still_serving(connection):
    """A well-formed request right after is answered: the teacher kept serving."""
    result = connection.query([0, 1], outputs=["logits"])
    assert result["logits"].shape == (2, connection.teacher.classes)


@pytest.fixture
def hello_info(teacher):
    with client(teacher) as connection:
        return connection.hello()


# ---------------------------------------------------------------- section 4-5: Hello

def test_hello_fields(teacher):
    with client(teacher) as connection:
        connection.send(wire.envelope(0, hello=trainer_hello()))
        message, tensors = connection.receive()
    assert message.WhichOneof("body") == "hello" and not tensors
    assert message.version_major == 1 and message.request_id == 0
    hello = message.hello
    wire.check_hello(hello, 1 << 62)  # the checks cm_wire applies to a teacher's Hello
    assert hello.peer_kind == pb.PEER_KIND_TEACHER
    assert hello.role in (pb.ROLE_FOUNDATION, pb.ROLE_COMPLEMENTARY)
    for field in ("model_sha256", "dataset_fingerprint"):
        value = getattr(hello, field)
        assert len(value) == 64 and set(value) <= set("0123456789abcdef"), field
    outputs = {output.name: list(output.shape) for output in hello.outputs}
    assert outputs.get("logits") == [hello.classes]
    assert set(hello.heads) <= set(outputs)
    limits = hello.limits
    assert min(limits.max_examples_per_request, limits.max_message_bytes,
               limits.max_in_flight_requests) >= 1


def test_hello_fingerprint(teacher, hello_info):
    expected = os.environ.get("COMMITTEE_FINGERPRINT")
    if expected is None:
        max_test = 500 if teacher.kind != "external" else 0  # what conftest serves
        data = committee.data.load(hello_info.dataset_name, hello_info.view, max_test=max_test)
        expected = data.fingerprint
    assert hello_info.dataset_fingerprint == expected


def test_hello_is_optional(teacher):
    with client(teacher) as connection:
        request_id = connection.next_id()
        connection.send(wire.envelope(request_id, batch_request=batch_request()))
        message, tensors = connection.wait_for(request_id)
    assert message.WhichOneof("body") == "batch_reply"
    assert list(message.batch_reply.example_ids) == [0, 1, 2]


def test_hello_needs_limits(teacher):
    with client(teacher) as connection:
        hello = trainer_hello()
        hello.ClearField("limits")
        connection.send(wire.envelope(0, hello=hello))
        expect_error(connection, 0, "FORMAT")
        connection.hello()
        still_serving(connection)


def test_unknown_major_version_refused(teacher):
    with client(teacher) as connection:
        message = wire.envelope(7, hello=trainer_hello())
        message.version_major = 2
        connection.send(message)
        error = expect_error(connection, 7, "VERSION")
        assert "version" in error.message.lower()
    with client(teacher) as connection:  # the teacher itself goes on
        connection.hello()
        still_serving(connection)


def test_newer_minor_version_accepted(teacher):
    with client(teacher) as connection:
        message = wire.envelope(0, hello=trainer_hello())
        message.version_minor = 99
        connection.send(message)
        reply, _ = connection.receive()
        assert reply.WhichOneof("body") == "hello"


def test_hello_lists_the_splits_it_serves(teacher, hello_info):
    """Minor version 2: Hello.splits lists train and test and whatever else the teacher's
    dataset holds, each once, in the order train, test, valid, transfer."""
    assert hello_info.splits, "a teacher of minor version 2 lists its splits"
    listed = list(hello_info.splits)
    assert listed[:2] == [pb.SPLIT_TRAIN, pb.SPLIT_TEST]
    assert listed == sorted(set(listed))
    if teacher.kind != "external":  # conftest's teachers serve Fashion-MNIST: train and test
        data = committee.data.load(hello_info.dataset_name, hello_info.view, max_test=500)
        assert listed == [wire.SPLITS[split] for split in data.splits]


@pytest.mark.parametrize("split", ["valid", "transfer"])
def test_a_split_it_does_not_serve_is_not_found(teacher, hello_info, split):
    if wire.SPLITS[split] in hello_info.splits:
        pytest.skip(f"this teacher serves the {split} split")
    with client(teacher) as connection:
        connection.hello()
        request_id = connection.next_id()
        connection.send(wire.envelope(request_id, batch_request=batch_request(
            ids=[0], split=wire.SPLITS[split])))
        error = expect_error(connection, request_id, "NOT_FOUND")
        assert split in error.message
        still_serving(connection)


# ---------------------------------------------------------------- section 6: BatchRequest

def test_reply_shapes_order_and_ids(teacher, hello_info):
    widths = {output.name: list(output.shape) for output in hello_info.outputs}
    wanted = list(reversed(list(widths)))  # asked in the reverse order of the Hello
    ids = [5, 3, 5, 0]  # duplicates are answered row by row
    with client(teacher) as connection:
        request_id = connection.next_id()
        connection.send(wire.envelope(request_id, batch_request=batch_request(
            ids, wanted, pb.SPLIT_TEST)))
        message, tensors = connection.wait_for(request_id)
        again = connection.query(ids, wanted, "test")
    reply = message.batch_reply
    assert message.WhichOneof("body") == "batch_reply" and message.request_id == request_id
    assert reply.split == pb.SPLIT_TEST and list(reply.example_ids) == ids
    assert [desc.name for desc in reply.tensors] == list(widths)  # the Hello's order
    for desc, frame in zip(reply.tensors, tensors):
        assert desc.layout == pb.LAYOUT_DENSE and desc.dtype == pb.DTYPE_F32
        assert desc.encoding == pb.ENCODING_F32
        assert list(desc.shape) == [len(ids)] + widths[desc.name]
        assert desc.byte_length == len(frame) == 4 * int(np.prod(desc.shape))
    decoded = wire.reply_tensors(reply, tensors)
    for name in wanted:
        assert np.array_equal(decoded[name], again[name])  # deterministic
        assert np.array_equal(decoded[name][0], decoded[name][2])


def _malformed_cases(hello):
    classes = hello.classes
    max_examples = hello.limits.max_examples_per_request
    good = pb.BatchRequest(split=pb.SPLIT_TRAIN, example_ids=[0], outputs=["logits"],
                           encoding=pb.ENCODING_F32)

    def request(request_id=9, **changes):
        body = pb.BatchRequest()
        body.CopyFrom(good)
        for name, value in changes.items():
            if isinstance(value, list):
                body.ClearField(name)
                getattr(body, name).extend(value)
            else:
                setattr(body, name, value)
        return [wire.envelope(request_id, batch_request=body).SerializeToString()]

    reply = pb.BatchReply(split=pb.SPLIT_TRAIN, example_ids=[0], tensors=[pb.TensorDesc(
        name="logits", dtype=pb.DTYPE_F32, encoding=pb.ENCODING_F32, shape=[1, 1],
        byte_length=4)])
    return {
        "empty header": ([b""], 0, "FORMAT"),
        "garbage header": ([b"\xff\xff\xff\xff not protobuf"], 0, "FORMAT"),
        "no body": ([pb.Envelope(version_major=1, request_id=9).SerializeToString()], 9,
                    "FORMAT"),
        "request id 0": (request(0), 0, "FORMAT"),
        "split unspecified": (request(split=pb.SPLIT_UNSPECIFIED), 9, "FORMAT"),
        "no example ids": (request(example_ids=[]), 9, "FORMAT"),
        "too many ids": (request(example_ids=[0] * (max_examples + 1)), 9, "TOO_LARGE"),
        "negative id": (request(example_ids=[0, -1]), 9, "OUT_OF_RANGE"),
        "id past the split": (request(example_ids=[0, 1 << 30]), 9, "OUT_OF_RANGE"),
        "unknown output": (request(outputs=["logits", "no-such-output"]), 9, "NOT_FOUND"),
        "duplicate outputs": (request(outputs=["logits", "logits"]), 9, "FORMAT"),
        "no outputs": (request(outputs=[]), 9, "FORMAT"),
        "encoding unspecified": (request(encoding=pb.ENCODING_UNSPECIFIED), 9, "FORMAT"),
        "encoding i32": (request(encoding=pb.ENCODING_I32), 9, "FORMAT"),
        "top_k above classes": (request(top_k=classes + 1), 9, "OUT_OF_RANGE"),
        "request with a tensor frame": (request() + [b"\0" * 8], 9, "FORMAT"),
        "too many frames": (request() + [b"x"] * 17, 0, "TOO_LARGE"),
        "string over 1024 bytes": (request(outputs=["x" * 1025]), 9, "TOO_LARGE"),
        "batch reply to a teacher": ([wire.envelope(9, batch_reply=reply).SerializeToString(),
                                      b"\0\0\0\0"], 9, "PROTOCOL"),
        "error to a teacher": ([wire.envelope(9, error=pb.Error(
            code="INTERNAL", message="hi")).SerializeToString()], 9, "PROTOCOL"),
        "head request id 0": ([wire.envelope(0, head_request=pb.HeadRequest(
            feature="hidden")).SerializeToString()], 0, "FORMAT"),
        "head request without feature": ([wire.envelope(9, head_request=pb.HeadRequest())
                                          .SerializeToString()], 9, "FORMAT"),
        "head for an unknown feature": ([wire.envelope(9, head_request=pb.HeadRequest(
            feature="no-such-feature")).SerializeToString()], 9, "NOT_FOUND"),
    }


MALFORMED = list(_malformed_cases(pb.Hello(classes=10, limits=pb.Limits(
    max_examples_per_request=4096))))


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_answered_and_still_serving(teacher, hello_info, case):
    frames, request_id, code = _malformed_cases(hello_info)[case]
    with client(teacher) as connection:
        connection.hello()
        connection.send_frames(frames)
        error = expect_error(connection, request_id, code)
        assert len(error.message.encode()) <= wire.MAX_STRING
        still_serving(connection)


def test_oversized_message_too_large(teacher, hello_info):
    limit = hello_info.limits.max_message_bytes
    with client(teacher) as connection:
        connection.hello()
        header = wire.envelope(9, batch_request=batch_request()).SerializeToString()
        connection.send_frames([header, b"\0" * (limit + 1 - len(header))])
        expect_error(connection, 0, "TOO_LARGE")
        still_serving(connection)


def test_error_messages_are_valid_utf8(teacher, hello_info):
    marker = "Z" * 12
    header = wire.envelope(9, batch_request=batch_request(outputs=[marker])).SerializeToString()
    header = header.replace(marker.encode(), b"\xff\xfe\xc3(" + b"Z" * 8)  # same length
    with client(teacher) as connection:
        connection.hello()
        connection.send_frames([header])
        frames = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and connection.socket.poll(30000):
            frames = connection.socket.recv_multipart()
            parsed = pb.Envelope()
            try:
                parsed.ParseFromString(frames[0])
            except Exception:
                pytest.fail("the teacher's answer is not a valid Envelope (invalid UTF-8 in a "
                            "string field)")
            if parsed.WhichOneof("body") != "heartbeat":
                break
        assert frames is not None, "no answer"
        assert parsed.WhichOneof("body") == "error"
        assert parsed.error.code in ("FORMAT", "NOT_FOUND")
        parsed.error.message.encode("utf-8")
        still_serving(connection)


# ---------------------------------------------------------------- encodings and top-k

def test_f16_bf16_within_bounds_of_f32(teacher, hello_info):
    names = [output.name for output in hello_info.outputs]
    ids = list(range(64))
    with client(teacher) as connection:
        exact = connection.query(ids, names)
        half = connection.query(ids, names, encoding="f16")
        brain = connection.query(ids, names, encoding="bf16")
    for name in names:
        reference = exact[name]
        assert half[name].dtype == np.float32 and half[name].shape == reference.shape
        # Round to nearest even: exactly NumPy's float16 cast, within 2^-11 relative.
        assert np.array_equal(half[name], reference.astype(np.float16).astype(np.float32))
        tiny = np.abs(reference) < 2.0 ** -14
        assert np.all(np.abs(half[name] - reference)[~tiny] <=
                      np.abs(reference[~tiny]) * 2.0 ** -11)
        assert np.all(np.abs(half[name] - reference)[tiny] <= 2.0 ** -25)
        assert np.all(np.abs(brain[name] - reference) <= np.abs(reference) * 2.0 ** -8)
        assert np.array_equal(brain[name], wire.bf16_to_f32(wire.f32_to_bf16(reference).tobytes())
                              .reshape(reference.shape))


@pytest.mark.parametrize("encoding", ["f32", "f16", "bf16"])
def test_top_k_within_bounds(teacher, hello_info, encoding):
    classes = hello_info.classes
    ids = list(range(40))
    with client(teacher) as connection:
        dense = connection.query(ids, ["logits"])["logits"]
        request_id = connection.request(ids, ["logits"], encoding=encoding, top_k=3)
        message, tensors = connection.wait_for(request_id)
        full = connection.query(ids, ["logits"], encoding=encoding, top_k=classes)["logits"]
    descs = message.batch_reply.tensors
    assert [(d.name, d.layout) for d in descs] == [
        ("logits", pb.LAYOUT_TOPK_VALUES), ("logits", pb.LAYOUT_TOPK_INDICES),
        ("logits", pb.LAYOUT_TAIL_MASS)]
    assert descs[1].dtype == pb.DTYPE_I32 and descs[1].encoding == pb.ENCODING_I32
    assert list(descs[0].shape) == [40, 3] and list(descs[2].shape) == [40]
    top = wire.reply_tensors(message.batch_reply, tensors)["logits"]
    order = np.argsort(-dense, axis=1, kind="stable")[:, :3]
    assert np.array_equal(top["indices"], order)
    values = np.take_along_axis(dense, order, axis=1)
    bound = {"f32": 0.0, "f16": 2.0 ** -11, "bf16": 2.0 ** -8}[encoding]
    assert np.all(np.abs(top["values"] - values) <= np.abs(values) * bound + 2.0 ** -24)
    shifted = np.exp((dense - dense.max(axis=1, keepdims=True)).astype(np.float64))
    tail = 1 - np.take_along_axis(shifted, order, axis=1).sum(1) / shifted.sum(1)
    assert np.all(np.abs(top["tail"] - tail) <= np.abs(tail) * max(bound, 2.0 ** -23) + 1e-7)
    assert np.all(full["tail"] <= 1e-6)


# ---------------------------------------------------------------- heads (section 10)

def test_head_reply(teacher, hello_info):
    if not hello_info.heads:
        pytest.skip("this teacher lends no head")
    feature = hello_info.heads[0]
    with client(teacher) as connection:
        request_id = connection.next_id()
        connection.send(wire.envelope(request_id, head_request=pb.HeadRequest(feature=feature)))
        message, tensors = connection.wait_for(request_id)
        outputs = connection.query(range(16), ["logits", feature])
    assert message.WhichOneof("body") == "head_reply"
    reply = message.head_reply
    assert reply.feature == feature and reply.kind == pb.HEAD_KIND_DENSE
    assert [d.name for d in reply.tensors] == ["weight", "bias"]
    weight = np.frombuffer(tensors[0], "<f4").reshape(tuple(reply.tensors[0].shape))
    bias = np.frombuffer(tensors[1], "<f4")
    assert weight.shape[0] == hello_info.classes == bias.shape[0]
    logits = outputs[feature] @ weight.T + bias
    assert np.allclose(logits, outputs["logits"], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- section 8: heartbeats

def test_heartbeats_to_an_idle_peer(teacher):
    interval = (teacher.heartbeat_ms or 1000) / 1000.0
    with client(teacher) as connection:
        connection.hello()
        started = time.time_ns()
        deadline = time.monotonic() + max(30.0, 20 * interval)
        beats = []
        while len(beats) < 2 and time.monotonic() < deadline:
            message, _ = connection.receive(deadline - time.monotonic(), skip_heartbeats=False)
            if message.WhichOneof("body") == "heartbeat":
                beats.append(message)
        assert len(beats) == 2, "no heartbeats to an idle peer"
        for beat in beats:
            assert beat.request_id == 0
            assert abs(beat.heartbeat.sent_unix_ns - started) < 60e9
        still_serving(connection)


def test_heartbeats_between_request_and_reply_are_skipped(slow_teacher):
    with client(slow_teacher) as connection:
        connection.hello()
        before = connection.heartbeats
        result = connection.query([1, 2], ["logits"])
        assert result["logits"].shape[0] == 2
        if slow_teacher.kind != "external":  # 400 ms of compute, 200 ms heartbeats
            assert connection.heartbeats > before


# ---------------------------------------------------------------- section 7: flow control

def _burst(connection, count, ids=(0,)):
    """Sends `count` requests back to back; returns {request id: code or "OK"}."""
    request_ids = [connection.request(list(ids)) for _ in range(count)]
    outcome = {}
    for request_id in request_ids:
        try:
            connection.result(request_id, timeout=ROUNDS_TIMEOUT)
            outcome[request_id] = "OK"
        except committee.TeacherError as error:
            outcome[request_id] = error.code
    return outcome


def test_busy_under_a_full_queue(slow_teacher):
    with client(slow_teacher) as probe:
        limits = probe.hello().limits
    peers = [client(slow_teacher) for _ in range(4)]
    try:
        for peer in peers:
            peer.hello()
        share = max(1, min(limits.max_in_flight_requests, 8))
        sent = {}
        for peer in peers:  # everything goes out before any answer is read
            sent[peer] = [peer.request([0]) for _ in range(share)]
        codes = []
        for peer, request_ids in sent.items():
            for request_id in request_ids:
                try:
                    peer.result(request_id, timeout=ROUNDS_TIMEOUT)
                    codes.append("OK")
                except committee.TeacherError as error:
                    codes.append(error.code)
        assert set(codes) <= {"OK", "BUSY"}
        assert "BUSY" in codes, f"{len(codes)} requests at once, no BUSY: {codes}"
        assert "OK" in codes
        still_serving(peers[0])
    finally:
        for peer in peers:
            peer.close()


def test_max_in_flight_enforced(slow_teacher):
    with client(slow_teacher) as connection:
        most = connection.hello().limits.max_in_flight_requests
        if most > 64:
            pytest.skip(f"max_in_flight_requests {most} is too many to test")
        first = connection.request([0])  # running (the slow teacher takes 400 ms) ...
        time.sleep(0.15)
        outcome = _burst(connection, most + 1)  # ... while `most` + 1 more arrive
        outcome[first] = "OK" if connection.result(first, timeout=ROUNDS_TIMEOUT) else "?"
        accepted = sum(code == "OK" for code in outcome.values())
        assert set(outcome.values()) <= {"OK", "BUSY"}
        assert accepted <= most, f"{accepted} of {most + 2} accepted, limit {most}"
        still_serving(connection)


def test_peer_that_never_reads_bounded_memory(teacher, hello_info):
    if teacher.pid is None:
        pytest.skip("set COMMITTEE_TEACHER_PID to watch the teacher's memory")
    names = [output.name for output in hello_info.outputs]
    per_example = 4 * sum(int(np.prod(output.shape)) for output in hello_info.outputs)
    ids = list(range(min(hello_info.limits.max_examples_per_request, 4096)))
    reply_bytes = per_example * len(ids)
    rounds_bytes = 600 << 20  # replies the flooder asks for and never reads
    burst = max(1, min(hello_info.limits.max_in_flight_requests, 8))
    rounds = max(4, rounds_bytes // (reply_bytes * burst))
    context = zmq.Context()
    flooder = context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.RCVHWM, 1)
    flooder.setsockopt(zmq.RCVBUF, 4096)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.connect(teacher.endpoint)
    request_id = 1

    def rss():
        with open(f"/proc/{teacher.pid}/status") as file:
            return next(int(line.split()[1]) << 10 for line in file
                        if line.startswith("VmRSS:"))

    try:
        with client(teacher) as observer:
            observer.hello()
            baseline = None
            for round_index in range(rounds):
                for _ in range(burst):
                    body = batch_request(ids, names)
                    flooder.send(wire.envelope(request_id, batch_request=body)
                                 .SerializeToString())
                    request_id += 1
                observer.query([0], ["logits"], timeout=ROUNDS_TIMEOUT)  # the burst is done
                if round_index == 1:
                    baseline = rss()
            observer.query([0], ["logits"], timeout=ROUNDS_TIMEOUT)
            grown = rss() - baseline
            still_serving(observer)
    finally:
        flooder.close()
        context.term()
    asked = (rounds - 2) * burst * reply_bytes
    assert grown < 256 << 20, (f"the teacher grew by {grown >> 20} MiB while a peer that never "
                               f"reads asked for {asked >> 20} MiB of replies")


# ---------------------------------------------------------------- section 8: Bye

def test_bye_on_stop_and_exit_0(slow_teacher):
    if slow_teacher.process is None:
        pytest.skip("stopping needs a teacher started by the suite")
    with client(slow_teacher) as connection:
        connection.hello()
        queued = connection.request([0, 1])
        time.sleep(0.05)
        slow_teacher.process.popen.send_signal(15)
        result = connection.result(queued, timeout=ROUNDS_TIMEOUT)  # finished, not dropped
        assert result["logits"].shape[0] == 2
        deadline = time.monotonic() + ROUNDS_TIMEOUT
        while not connection.byes and time.monotonic() < deadline:
            try:
                connection.receive(1.0)
            except TimeoutError:
                pass
        assert connection.byes, "no Bye from a stopping teacher"
        assert slow_teacher.process.popen.wait(ROUNDS_TIMEOUT) == 0
