"""committee.Client: ask a running teacher for outputs, the Python twin of `teacher-server query`.

One DEALER socket to one teacher endpoint, used by one thread.  Requests are answered
in any order and heartbeats may arrive between a request and its reply, so every
receive skips heartbeats and keeps replies to other requests for later.
"""
import time

import numpy as np
import zmq

from . import keys as keys_module
from . import wire
from .wire import pb, WireError


class TeacherError(Exception):
    """The teacher answered with an Error{code, message}."""

    def __init__(self, code, message, request_id=0):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


class Client:
    """connect to `endpoint`, optionally with CURVE (curve_secret_key: this side's
    BASENAME.key; teacher_key: the teacher's BASENAME.pub); timeout_ms bounds each wait."""

    def __init__(self, endpoint, name="python-client", timeout_ms=10000, curve_secret_key=None,
                 teacher_key=None, fingerprint="", classes=0, context=None):
        self.endpoint, self.name, self.timeout = endpoint, name, timeout_ms / 1000.0
        self.fingerprint, self.classes = fingerprint, classes
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 200)
        if curve_secret_key:
            public, secret = keys_module.load_keypair(curve_secret_key)
            self.socket.curve_publickey = public.encode()
            self.socket.curve_secretkey = secret.encode()
            self.socket.curve_serverkey = keys_module.load_public(teacher_key).encode()
        self.socket.connect(endpoint)
        self._next_id = 1
        self._kept = {}  # request id -> (Envelope, frames) received while waiting for another
        self.teacher = None  # the teacher's Hello once hello() ran
        self.heartbeats = 0
        self.byes = []

    def close(self, bye=True):
        if bye:  # never blocks: a teacher that never completed the handshake gets none
            try:
                self.socket.send(wire.envelope(0, bye=pb.Bye(reason="client closing"))
                                 .SerializeToString(), zmq.NOBLOCK)
            except zmq.Again:
                pass
        self.socket.close()
        if self._own_context:
            self.context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- raw access

    def next_id(self):
        request_id, self._next_id = self._next_id, self._next_id + 1
        return request_id

    def send(self, message, frames=()):
        self.send_frames(wire.pack(message, frames))

    def send_frames(self, frames):
        self.socket.send_multipart(list(frames))

    def receive(self, timeout=None, skip_heartbeats=True):
        """The next message (Envelope, tensor frames), heartbeats skipped; TimeoutError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(left * 1000):
                raise TimeoutError(f"no message from the teacher at {self.endpoint} within "
                                   f"{self.timeout if timeout is None else timeout:.1f} s")
            frames = self.socket.recv_multipart()
            message, tensors = wire.decode(frames, 1 << 31)
            kind = message.WhichOneof("body")
            if kind == "heartbeat":
                self.heartbeats += 1
                if skip_heartbeats:
                    continue
            if kind == "bye":
                self.byes.append(message.bye.reason)
            return message, tensors

    def wait_for(self, request_id, timeout=None):
        """The message answering request_id (replies to others are kept for later)."""
        if request_id in self._kept:
            return self._kept.pop(request_id)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message, tensors = self.receive(max(0.001, deadline - time.monotonic()))
            if message.request_id == request_id and message.WhichOneof("body") != "hello":
                return message, tensors
            if message.request_id:
                self._kept[message.request_id] = (message, tensors)

    # ---------------------------------------------------------------- the protocol

    def hello(self):
        """Greets the teacher and returns its Hello (pb.Hello), also kept in self.teacher."""
        hello = pb.Hello(peer_kind=pb.PEER_KIND_TRAINER, peer_name=self.name,
                         dataset_fingerprint=self.fingerprint, classes=self.classes,
                         limits=pb.Limits(max_examples_per_request=1 << 20,
                                          max_message_bytes=1 << 30,
                                          max_in_flight_requests=8))
        self.send(wire.envelope(0, hello=hello))
        deadline = time.monotonic() + self.timeout
        while True:
            message, _ = self.receive(max(0.001, deadline - time.monotonic()))
            kind = message.WhichOneof("body")
            if kind == "hello":
                self.teacher = message.hello
                return message.hello
            if kind == "error":
                raise TeacherError(message.error.code, message.error.message)

    def request(self, ids, outputs=("logits",), split="train", encoding="f32", top_k=0):
        """Sends a BatchRequest without waiting; returns its request id."""
        request_id = self.next_id()
        request = pb.BatchRequest(split=wire.SPLITS[split],
                                  example_ids=[int(i) for i in np.asarray(ids).ravel()],
                                  outputs=list(outputs), encoding=wire.ENCODINGS[encoding],
                                  top_k=top_k)
        self.send(wire.envelope(request_id, batch_request=request))
        return request_id

    def result(self, request_id, timeout=None):
        """The outputs answering request_id: {name: float32 array} and, for top-k logits,
        {"logits": {"values", "indices", "tail"}}; TeacherError for an Error."""
        message, tensors = self.wait_for(request_id, timeout)
        kind = message.WhichOneof("body")
        if kind == "error":
            raise TeacherError(message.error.code, message.error.message, request_id)
        if kind != "batch_reply":
            raise WireError("PROTOCOL", f"the teacher answered request {request_id} with a {kind}")
        return wire.reply_tensors(message.batch_reply, tensors)

    def query(self, ids, outputs=("logits",), split="train", encoding="f32", top_k=0,
              timeout=None):
        """Asks for `outputs` of examples `ids` of `split` and waits for them."""
        return self.result(self.request(ids, outputs, split, encoding, top_k), timeout)

    def head(self, feature="hidden"):
        """The head a teacher lends for `feature`: (weight [classes, width], bias [classes])."""
        request_id = self.next_id()
        self.send(wire.envelope(request_id, head_request=pb.HeadRequest(feature=feature)))
        message, tensors = self.wait_for(request_id)
        if message.WhichOneof("body") == "error":
            raise TeacherError(message.error.code, message.error.message, request_id)
        weight_desc = message.head_reply.tensors[0]
        weight = np.frombuffer(tensors[0], dtype="<f4").reshape(tuple(weight_desc.shape))
        return weight.astype(np.float32), np.frombuffer(tensors[1], dtype="<f4").astype(np.float32)
