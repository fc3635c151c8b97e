"""committee.Teacher: serve any NumPy/PyTorch model over committee.v1, as teacher-server does.

Threads.  serve() runs the I/O loop on the calling thread: it alone owns the ROUTER
socket, polls it together with a wake-up pipe, answers Hello, HeadRequest, heartbeats
and every refusal at once, and sends the replies.  Forward passes run on one compute
thread, which takes jobs from a bounded queue and hands results back through a second
queue and the pipe; the user's forward function only ever runs there.  HTTP
(/healthz, /readyz, /metrics from prometheus_client) runs on its own thread, and with
CURVE pyzmq's ThreadAuthenticator answers ZAP on another.

Flow control, per proto/README.md section 7.  A request is refused with Error{BUSY},
at once, when the work queue holds `queue` jobs, when its peer already has
`max_in_flight` requests accepted and not yet answered (the limit the Hello
advertises), or when more than `max_queued_mb` of replies to that peer still sit in
ZeroMQ's send queue (sends are zero-copy and tracked, so a peer that never reads costs
a bounded amount of memory).  The ROUTER is ROUTER_MANDATORY and sends never block:
a reply ZeroMQ cannot take is dropped and counted.

Stopping.  SIGINT/SIGTERM (when serve() runs on the main thread) or stop(): new
requests get Error{UNAVAILABLE}, queued and running ones finish and are answered,
every known peer gets Bye, and serve() returns 0.  A second signal answers the queued
requests Error{CANCELLED}.
"""
import collections
import hashlib
import http.server
import os
import signal
import sys
import threading
import time

import numpy as np
import zmq

from . import data as data_module
from . import keys as keys_module
from . import wire
from .wire import pb, WireError

HEARTBEAT_SILENCE = 10  # intervals of silence after which a peer is forgotten


def _log(level, text):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp}Z committee-teacher {level}: {text}", file=sys.stderr, flush=True)


class _Peer:
    def __init__(self, routing, now):
        self.routing = routing
        self.name = "unnamed"
        self.last_seen = now
        self.last_sent = now
        self.in_flight = 0
        self.tracked = collections.deque()  # (MessageTracker, bytes) of unsent replies

    def queued_bytes(self):
        while self.tracked and self.tracked[0][0].done:
            self.tracked.popleft()
        return sum(size for tracker, size in self.tracked if not tracker.done)


class _Job:
    __slots__ = ("routing", "request_id", "split", "ids", "outputs", "encoding", "top_k",
                 "received", "started", "finished", "frames", "descs", "error")

    def __init__(self, routing, request_id, split, ids, outputs, encoding, top_k):
        self.routing, self.request_id, self.split, self.ids = routing, request_id, split, ids
        self.outputs, self.encoding, self.top_k = outputs, encoding, top_k
        self.received = time.monotonic()
        self.started = self.finished = self.received
        self.frames, self.descs, self.error = [], [], None


def _parse_outputs(outputs):
    """{"logits": (10,)} or "logits:10,hidden:64" or "tokens:16x64" -> ordered dict."""
    if isinstance(outputs, str):
        parsed = {}
        for item in outputs.split(","):
            name, _, shape = item.partition(":")
            if not name or not shape:
                raise ValueError(f"output '{item}' is not NAME:SHAPE (e.g. logits:10)")
            parsed[name] = tuple(int(dim) for dim in shape.split("x"))
        outputs = parsed
    result = {}
    for name, shape in dict(outputs).items():
        shape = (shape,) if isinstance(shape, int) else tuple(int(dim) for dim in shape)
        if not shape or min(shape) < 1 or len(shape) > wire.MAX_DIMS:
            raise ValueError(f"output '{name}' has shape {shape}; every dimension must be >= 1")
        result[name] = shape
    if not result or len(result) > wire.MAX_OUTPUTS:
        raise ValueError(f"a teacher exposes 1 to {wire.MAX_OUTPUTS} outputs")
    return result


def is_loopback(endpoint):
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[6:]
    return host.startswith(("127.", "localhost:", "[::1]:"))


class Teacher:
    """A frozen teacher: metadata, a dataset view and a forward function.

    name, role ("foundation" or "complementary"); data (a dataset folder or "fashion-mnist")
    and view, or dataset (a committee.data.Dataset already loaded); outputs, an ordered
    mapping of output name to per-example shape ({"logits": (10,), "hidden": (64,)} or
    "logits:10,hidden:64"), which must include "logits" of width `classes`; forward, a
    function from a float32 array of the view's rows [batch, features] (takes="rows") or
    from (split name, int32 example ids [batch]) (takes="ids") to a dict of arrays [batch,
    *shape] for at least the outputs asked for. model_id names the model in the Hello
    (default "python:NAME"); model_sha256 identifies its weights (64 hex digits; replicas
    and restarts must agree; default: SHA-256 of model_file when given, else of name and
    model_id). head: {"hidden": (weight [classes, width], bias [classes])} lends the dense
    layer from that output to the logits.
    """

    def __init__(self, name, role, forward, outputs, data="fashion-mnist", view="full",
                 dataset=None, takes="rows", model_id=None, model_sha256=None, model_file=None,
                 data_dir=None, max_train=0, max_test=0, head=None, queue=32, max_in_flight=None,
                 max_examples=4096, max_message_mb=64, max_queued_mb=64, heartbeat_ms=1000,
                 compute_batch=256, compute_delay_ms=0, curve_secret_key=None, allow_keys=None,
                 insecure_public=False):
        if role not in wire.ROLES:
            raise ValueError(f"role must be foundation or complementary, not '{role}'")
        if takes not in ("rows", "ids"):
            raise ValueError("takes must be 'rows' or 'ids'")
        if (curve_secret_key is None) != (allow_keys is None):
            raise ValueError("curve_secret_key and allow_keys go together: authentication needs "
                             "an allowlist")
        if min(queue, max_examples, max_message_mb, max_queued_mb, compute_batch) < 1 or \
                heartbeat_ms < 10:
            raise ValueError("queue, max_examples, max_message_mb, max_queued_mb and "
                             "compute_batch must be at least 1, heartbeat_ms at least 10")
        self.name, self.role, self.forward, self.takes = name, role, forward, takes
        self.outputs = _parse_outputs(outputs)
        self.dataset = dataset or data_module.load(data, view, data_dir, max_train, max_test)
        if "logits" not in self.outputs or self.outputs["logits"] != (self.dataset.classes,):
            raise ValueError(f"a teacher exposes 'logits' of shape ({self.dataset.classes},), "
                             f"one per class of {self.dataset.name}")
        self.model_id = model_id or f"python:{name}"
        if model_sha256 is None:
            if model_file:
                with open(model_file, "rb") as file:
                    model_sha256 = hashlib.sha256(file.read()).hexdigest()
            else:
                model_sha256 = hashlib.sha256(f"{name}\n{self.model_id}".encode()).hexdigest()
        self.model_sha256 = model_sha256
        self.heads = {}
        for feature, (weight, bias) in (head or {}).items():
            weight = np.ascontiguousarray(weight, dtype="<f4")
            bias = np.ascontiguousarray(bias, dtype="<f4")
            if feature not in self.outputs or weight.shape != \
                    (self.dataset.classes, self.outputs[feature][0]) or \
                    bias.shape != (self.dataset.classes,):
                raise ValueError(f"the head for '{feature}' must be weight [classes, width of "
                                 f"'{feature}'] and bias [classes]")
            self.heads[feature] = (weight, bias)
        self.queue_limit = queue
        self.max_in_flight = max_in_flight or queue
        self.max_examples = max_examples
        self.max_message_bytes = max_message_mb << 20
        self.max_queued_bytes = max_queued_mb << 20
        self.heartbeat = heartbeat_ms / 1000.0
        self.compute_batch = compute_batch
        self.compute_delay = compute_delay_ms / 1000.0
        self.curve_secret_key, self.allow_keys = curve_secret_key, allow_keys
        self.insecure_public = insecure_public
        self._lock = threading.Condition()
        self._pending = collections.deque()
        self._done = collections.deque()
        self._running = 0
        self._exit_worker = False
        self._stop_requests = 0
        self._wake_read, self._wake_write = os.pipe()
        self.ready = False
        self.stopping = False
        self.endpoint = None
        self.http_address = None
        self._make_metrics()

    # ------------------------------------------------------------ metrics and HTTP

    def _make_metrics(self):
        # The same families as teacher-server's /metrics (README, "Prometheus"): no extra
        # *_created series (the client reads this when it is first imported).
        os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
        registry = self.registry = CollectorRegistry()
        bounds = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
        prefix = "committee_teacher_"
        self.m_requests = Counter(prefix + "requests", "BatchRequests received.",
                                  registry=registry)
        self.m_head_requests = Counter(prefix + "head_requests", "HeadRequests received.",
                                       registry=registry)
        self.m_examples = Counter(prefix + "examples",
                                  "Examples run through the model (forward passes).",
                                  registry=registry)
        self.m_bytes_out = Counter(prefix + "sent_bytes", "Bytes of replies handed to ZeroMQ.",
                                   registry=registry)
        self.m_dropped = Counter(prefix + "replies_dropped",
                                 "Replies ZeroMQ could not take (peer gone or full).",
                                 registry=registry)
        self.m_errors = Counter(prefix + "errors", "Requests or messages answered with an Error "
                                "(or dropped), by code.", ["code"], registry=registry)
        for code in wire.CODES:  # every code from the start, at 0
            self.m_errors.labels(code=code)
        self.m_queue_seconds = Histogram(prefix + "queue_seconds", "Time requests waited for "
                                         "the compute thread.", buckets=bounds, registry=registry)
        self.m_compute_seconds = Histogram(prefix + "compute_seconds", "Time of the forward "
                                           "passes and encoding of a request.", buckets=bounds,
                                           registry=registry)
        self.m_queue_depth = Gauge(prefix + "queue_depth", "Requests waiting for the compute "
                                   "thread.", registry=registry)
        self.m_peers = Gauge(prefix + "peers", "Peers (trainers) the teacher currently knows.",
                             registry=registry)
        Info("committee_teacher", "This teacher, as its Hello describes it.",
             registry=registry).info({"name": self.name, "role": self.role,
                                      "model": self.model_id, "view": self.dataset.view})

    def _start_http(self, address):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        host, _, port = address.rpartition(":")
        teacher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/healthz":
                    status, body, kind = 200, b"ok\n", "text/plain"
                elif path == "/readyz":
                    ready = teacher.ready and not teacher.stopping
                    status, body = (200, b"ready\n") if ready else (503, b"not ready\n")
                    kind = "text/plain"
                elif path == "/metrics":
                    status, body, kind = 200, generate_latest(teacher.registry), \
                        CONTENT_TYPE_LATEST
                else:
                    status, body, kind = 404, b"not found\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        server.daemon_threads = True
        self._http = server
        self.http_address = f"{host}:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name="committee-http", daemon=True).start()

    # ------------------------------------------------------------ compute thread

    def _compute_thread(self):
        while True:
            with self._lock:
                while not self._pending and not self._exit_worker:
                    self._lock.wait()
                if self._exit_worker:
                    return
                job = self._pending.popleft()
                self._running += 1
            job.started = time.monotonic()
            if self.compute_delay:
                time.sleep(self.compute_delay)
            try:
                self._compute(job)
            except Exception as error:  # the user's forward failed: answer, keep serving
                job.frames, job.descs = [], []
                job.error = ("INTERNAL", f"teacher '{self.name}' failed on request "
                                         f"{job.request_id}: {type(error).__name__}: {error}")
            job.finished = time.monotonic()
            with self._lock:
                self._running -= 1
                self._done.append(job)
            os.write(self._wake_write, b"j")

    def _run_forward(self, split, ids):
        if self.takes == "ids":
            result = self.forward(split, ids)
        else:
            data = self.dataset.splits[split]
            result = self.forward(data.gather(data.rows(ids)))
        return result

    def _compute(self, job):
        wanted = list(job.outputs)
        if job.top_k and "logits" not in wanted:
            wanted.append("logits")
        count = len(job.ids)
        staging = {name: np.empty((count, *self.outputs[name]), dtype=np.float32)
                   for name in wanted}
        for start in range(0, count, self.compute_batch):
            chunk = job.ids[start:start + self.compute_batch]
            result = self._run_forward(job.split, chunk)
            for name in wanted:
                if name not in result:
                    raise ValueError(f"the forward function returned no '{name}'")
                value = result[name]
                if hasattr(value, "detach"):  # a torch tensor
                    value = value.detach().cpu().numpy()
                value = np.asarray(value, dtype=np.float32)
                if value.shape != (len(chunk), *self.outputs[name]):
                    raise ValueError(f"the forward function returned '{name}' of shape "
                                     f"{value.shape}, expected {(len(chunk), *self.outputs[name])}")
                staging[name][start:start + len(chunk)] = value
        for name in self.outputs:  # the Hello's order, whatever the request's
            if name not in job.outputs:
                continue
            if name == "logits" and job.top_k:
                self._add_top_k(job, staging[name])
            else:
                self._add_tensor(job, name, pb.DTYPE_F32, job.encoding, pb.LAYOUT_DENSE,
                                 wire.encode_floats(staging[name], job.encoding))

    def _add_tensor(self, job, name, dtype, encoding, layout, array):
        job.descs.append(pb.TensorDesc(name=name, dtype=dtype, encoding=encoding, layout=layout,
                                       shape=list(array.shape), byte_length=array.nbytes))
        job.frames.append(array)

    def _add_top_k(self, job, logits):
        """The k largest logits (largest first, ties to the lower class), their classes and
        the softmax mass of the rest, computed as teacher_serve.c does."""
        k = job.top_k
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k].astype("<i4")
        values = np.take_along_axis(logits, order, axis=1)
        shifted = (logits - logits.max(axis=1, keepdims=True)).astype(np.float64)
        exps = np.exp(shifted)
        total = np.zeros(len(logits))
        for column in range(exps.shape[1]):  # in class order, as the C loop sums
            total += exps[:, column]
        kept = np.zeros(len(logits))
        picked = np.take_along_axis(exps, order, axis=1)
        for slot in range(k):
            kept += picked[:, slot]
        tail = np.maximum(0.0, 1.0 - kept / total).astype(np.float32)
        self._add_tensor(job, "logits", pb.DTYPE_F32, job.encoding, pb.LAYOUT_TOPK_VALUES,
                         wire.encode_floats(values, job.encoding))
        self._add_tensor(job, "logits", pb.DTYPE_I32, pb.ENCODING_I32, pb.LAYOUT_TOPK_INDICES,
                         np.ascontiguousarray(order))
        self._add_tensor(job, "logits", pb.DTYPE_F32, job.encoding, pb.LAYOUT_TAIL_MASS,
                         wire.encode_floats(tail, job.encoding))

    # ------------------------------------------------------------ I/O thread

    def _send(self, routing, message, frames=(), peer=None):
        parts = [routing, message.SerializeToString(), *frames]
        size = sum(len(part) if isinstance(part, bytes) else part.nbytes for part in parts[1:])
        try:
            tracker = self.socket.send_multipart(parts, zmq.NOBLOCK, copy=not frames,
                                                 track=bool(frames))
        except zmq.ZMQError:  # the peer is gone or its queue is full (ROUTER_MANDATORY)
            self.m_dropped.inc()
            return False
        self.m_bytes_out.inc(size)
        peer = peer or self.peers.get(routing)
        if peer:
            peer.last_sent = time.monotonic()
            if frames and tracker is not None and not tracker.done:
                peer.tracked.append((tracker, size))
        return True

    def _error(self, routing, request_id, code, sentence):
        self.m_errors.labels(code=code).inc()
        self._send(routing, wire.error_message(request_id, code, sentence))

    def _peer(self, routing):
        peer = self.peers.get(routing)
        if peer is None:
            if len(self.peers) >= 256:
                return None
            peer = self.peers[routing] = _Peer(routing, time.monotonic())
            self.m_peers.set(len(self.peers))
        peer.last_seen = time.monotonic()
        return peer

    def _forget(self, routing):
        if self.peers.pop(routing, None) is not None:
            self.m_peers.set(len(self.peers))

    def hello_message(self, request_id=0):
        dataset = self.dataset
        hello = pb.Hello(
            peer_kind=pb.PEER_KIND_TEACHER, peer_name=self.name, role=wire.ROLES[self.role],
            model_id=self.model_id, model_sha256=self.model_sha256, view=dataset.view,
            dataset_name=dataset.name, dataset_fingerprint=dataset.fingerprint,
            classes=dataset.classes,
            outputs=[pb.OutputSpec(name=name, dtype=pb.DTYPE_F32, shape=list(shape))
                     for name, shape in self.outputs.items()],
            limits=pb.Limits(max_examples_per_request=self.max_examples,
                             max_message_bytes=self.max_message_bytes,
                             max_in_flight_requests=self.max_in_flight),
            heads=list(self.heads),
            splits=[wire.SPLITS[split] for split in dataset.splits])  # minor 2
        return wire.envelope(request_id, hello=hello)

    def _on_message(self, frames):
        if len(frames) < 2:
            self.m_errors.labels(code="FORMAT").inc()
            return
        routing, frames = bytes(frames[0]), frames[1:]
        peer = self._peer(routing)
        try:
            message, _ = wire.decode(frames, self.max_message_bytes, self.max_examples)
        except WireError as error:
            self._error(routing, error.request_id, error.code, error.sentence)
            if error.code == "VERSION":
                self._forget(routing)
            return
        kind = message.WhichOneof("body")
        if kind == "hello":
            if peer:
                peer.name = message.hello.peer_name
            _log("info", f"hello from {'trainer' if message.hello.peer_kind == 2 else 'peer'} "
                         f"'{wire.shown(message.hello.peer_name)}'")
            self._send(routing, self.hello_message(message.request_id))
        elif kind == "heartbeat":
            pass
        elif kind == "bye":
            self._forget(routing)
        elif kind == "batch_request":
            self._on_batch_request(routing, peer, message)
        elif kind == "head_request":
            self._on_head_request(routing, message)
        else:
            self._error(routing, message.request_id, "PROTOCOL", "a teacher accepts Hello, "
                        "BatchRequest, HeadRequest, Heartbeat and Bye only")

    def _on_batch_request(self, routing, peer, message):
        request, request_id = message.batch_request, message.request_id
        self.m_requests.inc()
        if self.stopping:
            return self._error(routing, request_id, "UNAVAILABLE",
                               f"teacher '{self.name}' is shutting down")
        split = wire.SPLIT_NAMES[request.split]
        if split not in self.dataset.splits:
            return self._error(routing, request_id, "NOT_FOUND",
                               f"dataset {self.dataset.name} has no '{split}' split (teacher "
                               f"'{self.name}')")
        size = self.dataset.splits[split].count
        ids = np.asarray(request.example_ids, dtype=np.int32)
        missing = self.dataset.splits[split].rows(ids) < 0
        if missing.any():
            position = int(np.argmax(missing))
            return self._error(routing, request_id, "OUT_OF_RANGE",
                               f"example id {ids[position]} (position {position}) is not among "
                               f"the split's {size} examples: split '{split}' of teacher "
                               f"'{self.name}' has {size} examples")
        classes = self.dataset.classes
        if request.top_k > classes:
            return self._error(routing, request_id, "OUT_OF_RANGE",
                               f"top_k {request.top_k} is not in 0..{classes} (the number of "
                               "classes)")
        for name in request.outputs:
            if name not in self.outputs:
                return self._error(routing, request_id, "NOT_FOUND",
                                   f"teacher '{self.name}' has no output '{wire.shown(name)}' "
                                   f"(it offers {', '.join(self.outputs)})")
        if peer is not None and peer.in_flight >= self.max_in_flight:
            return self._error(routing, request_id, "BUSY",
                               f"peer '{wire.shown(peer.name)}' already has {peer.in_flight} "
                               f"requests in flight, the most teacher '{self.name}' accepts "
                               "(max_in_flight_requests); wait for a reply")
        if peer is not None and peer.queued_bytes() > self.max_queued_bytes:
            return self._error(routing, request_id, "BUSY",
                               f"teacher '{self.name}' holds more than {self.max_queued_bytes} "
                               "bytes of replies this peer has not read yet; read them first")
        job = _Job(routing, request_id, split, ids, list(request.outputs), request.encoding,
                   request.top_k)
        with self._lock:
            accepted = len(self._pending) < self.queue_limit
            if accepted:
                self._pending.append(job)
                self._lock.notify()
            depth = len(self._pending)
        self.m_queue_depth.set(depth)
        if not accepted:
            return self._error(routing, request_id, "BUSY",
                               f"teacher '{self.name}' has {depth} requests queued; try again "
                               "later")
        if peer is not None:
            peer.in_flight += 1

    def _on_head_request(self, routing, message):
        feature = message.head_request.feature
        self.m_head_requests.inc()
        if self.stopping:
            return self._error(routing, message.request_id, "UNAVAILABLE",
                               f"teacher '{self.name}' is shutting down")
        if feature not in self.heads:
            lent = ", ".join(self.heads) or "none"
            return self._error(routing, message.request_id, "NOT_FOUND",
                               f"teacher '{self.name}' lends no head for feature "
                               f"'{wire.shown(feature)}' (it lends: {lent})")
        weight, bias = self.heads[feature]
        descs = [pb.TensorDesc(name=name, dtype=pb.DTYPE_F32, encoding=pb.ENCODING_F32,
                               layout=pb.LAYOUT_DENSE, shape=list(array.shape),
                               byte_length=array.nbytes)
                 for name, array in (("weight", weight), ("bias", bias))]
        reply = wire.envelope(message.request_id, head_reply=pb.HeadReply(
            feature=feature, kind=pb.HEAD_KIND_DENSE, tensors=descs))
        self._send(routing, reply, [weight.tobytes(), bias.tobytes()])

    def _send_done(self):
        while True:
            with self._lock:
                if not self._done:
                    depth = len(self._pending)
                    break
                job = self._done.popleft()
            peer = self.peers.get(job.routing)
            if peer is not None:
                peer.in_flight = max(0, peer.in_flight - 1)
            if job.error:
                self._error(job.routing, job.request_id, *job.error)
                continue
            reply = wire.envelope(job.request_id, batch_reply=pb.BatchReply(
                split=wire.SPLITS[job.split], example_ids=job.ids.tolist(), tensors=job.descs))
            if self._send(job.routing, reply, job.frames, peer):
                self.m_examples.inc(len(job.ids))
                self.m_queue_seconds.observe(job.started - job.received)
                self.m_compute_seconds.observe(job.finished - job.started)
        self.m_queue_depth.set(depth)

    def _heartbeats(self):
        now = time.monotonic()
        for routing, peer in list(self.peers.items()):
            if now - peer.last_seen > HEARTBEAT_SILENCE * self.heartbeat:
                if peer.queued_bytes():
                    # its replies still sit in ZeroMQ's queue: forgetting the peer would forget
                    # those bytes too, and its next request would start a fresh budget
                    continue
                _log("info", f"'{wire.shown(peer.name)}' has been silent for "
                             f"{now - peer.last_seen:.0f} s; forgetting it")
                self._forget(routing)
            elif now - peer.last_sent >= self.heartbeat:
                beat = wire.envelope(0, heartbeat=pb.Heartbeat(sent_unix_ns=time.time_ns()))
                self._send(routing, beat, peer=peer)

    def stop(self):
        """Asks a running serve() to stop gracefully (thread-safe; a second call cancels)."""
        self._stop_requests += 1
        os.write(self._wake_write, b"s")

    def _on_stop_request(self):
        if not self.stopping:
            _log("info", "stopping: finishing queued requests, then stopping")
            self.stopping = True
        elif self._stop_requests >= 2 and not self._cancelled:
            self._cancelled = True
            _log("info", "stopped again: cancelling queued requests")
            with self._lock:
                cancelled, self._pending = list(self._pending), collections.deque()
            for job in cancelled:
                peer = self.peers.get(job.routing)
                if peer:
                    peer.in_flight = max(0, peer.in_flight - 1)
                self._error(job.routing, job.request_id, "CANCELLED",
                            "the teacher was stopped before this request ran")

    def _idle(self):
        with self._lock:
            return not self._pending and not self._running and not self._done

    # ------------------------------------------------------------ serve

    def _setup_socket(self, bind):
        context = self.context = zmq.Context()
        socket = self.socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 1000)
        socket.setsockopt(zmq.SNDHWM, 1000)
        socket.setsockopt(zmq.RCVHWM, 1000)
        socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_bytes)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._auth = None
        if self.curve_secret_key:
            from zmq.auth.thread import ThreadAuthenticator
            public, secret = keys_module.load_keypair(self.curve_secret_key)
            allowed = keys_module.load_allowlist(self.allow_keys)
            teacher = self

            class Allowlist:
                def callback(self, domain, key):
                    name = allowed.get(key.decode() if isinstance(key, bytes) else key)
                    if name is None:
                        _log("warn", f"refused a trainer with unknown public key "
                                     f"{key.decode() if isinstance(key, bytes) else key}")
                        teacher.m_errors.labels(code="UNAUTHORIZED").inc()
                        return False
                    return True

            self._auth = ThreadAuthenticator(context)
            self._auth.start()
            self._auth.configure_curve_callback(domain="committee",
                                                credentials_provider=Allowlist())
            socket.curve_server = True
            socket.curve_publickey = public.encode()
            socket.curve_secretkey = secret.encode()
            socket.zap_domain = b"committee"
            _log("info", f"CURVE on: public key {public}, {len(allowed)} trainer key(s) allowed "
                         f"from {self.allow_keys}")
        socket.bind(bind)
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self, bind="tcp://127.0.0.1:5555", http="127.0.0.1:9100"):
        """Serves until stopped (SIGINT/SIGTERM on the main thread, or stop()); returns the
        process exit code: 0 after a graceful stop."""
        if not is_loopback(bind) and not self.curve_secret_key and not self.insecure_public:
            raise ValueError(f"bind {bind} is not a loopback address; that needs encryption "
                             "(curve_secret_key and allow_keys) or insecure_public=True")
        self.peers = {}
        self._cancelled = False
        self._setup_socket(bind)
        if http and http != "off":
            self._start_http(http)
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                handlers[number] = signal.signal(number, lambda *_: self.stop())
        worker = threading.Thread(target=self._compute_thread, name="committee-compute",
                                  daemon=True)
        worker.start()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        self.ready = True
        role = self.role
        _log("info", f"serving '{self.name}' ({role}, {self.model_id}) on {self.endpoint}, view "
                     f"{self.dataset.view} of {self.dataset.name}, dataset "
                     f"{self.dataset.fingerprint[:12]}..., HTTP {self.http_address or 'off'}")
        next_beat = time.monotonic() + self.heartbeat
        try:
            while True:
                timeout = max(0.0, next_beat - time.monotonic())
                events = dict(poller.poll(timeout * 1000))
                if self._wake_read in events:
                    wakes = os.read(self._wake_read, 4096)
                    for _ in range(wakes.count(b"s")):
                        self._on_stop_request()
                if self.socket in events:
                    for _ in range(1000):  # drain, but let replies and timers through
                        try:
                            frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._on_message([frame.buffer for frame in frames])
                self._send_done()
                if time.monotonic() >= next_beat:
                    self._heartbeats()
                    next_beat = time.monotonic() + self.heartbeat
                if self.stopping and self._idle():
                    break
        finally:
            with self._lock:
                self._exit_worker = True
                self._lock.notify()
            bye = wire.envelope(0, bye=pb.Bye(reason="teacher is shutting down"))
            for routing in list(self.peers):
                self._send(routing, bye)
            _log("info", f"said bye to {len(self.peers)} peer(s); closing")
            self.ready = False
            worker.join(timeout=5)
            if getattr(self, "_http", None):
                self._http.shutdown()
                self._http.server_close()
            self.socket.close()
            if self._auth:
                self._auth.stop()
            self.context.term()
            for number, previous in handlers.items():
                signal.signal(number, previous)
        _log("info", "stopped")
        return 0
