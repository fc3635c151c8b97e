"""The conformance suite's teachers.

With COMMITTEE_ENDPOINT=tcp://HOST:PORT the suite checks that one running teacher
(any implementation); COMMITTEE_TEACHER_PID (its process id, on this machine) enables
the memory test, COMMITTEE_SLOW_ENDPOINT (a second instance that takes a while per
request, e.g. teacher-server serve --compute-delay-ms 300 --queue 4) the flow-control
tests, COMMITTEE_FINGERPRINT the expected dataset fingerprint (default: the one
committee.data computes for the teacher's dataset and view, whole splits).

Without it (make check-python), every test runs against both reference teachers on a
tiny fitted MLP: `teacher-server serve` (C) and `python3 -m committee serve --mlp`
(Python), each started here as a real process on ephemeral ports, plus a slow twin of
each (--compute-delay-ms, --queue 4) for the flow-control tests.
"""
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import processes  # noqa: E402

HEARTBEAT_MS = 200
SLOW_DELAY_MS = 400
SLOW_QUEUE = 4


class Target:
    """What a test needs to know about the teacher under test."""

    def __init__(self, kind, endpoint, process=None, heartbeat_ms=None, delay_ms=0):
        self.kind, self.endpoint, self.process = kind, endpoint, process
        self.heartbeat_ms, self.delay_ms = heartbeat_ms, delay_ms

    @property
    def pid(self):
        if self.process:
            return self.process.pid
        return int(os.environ["COMMITTEE_TEACHER_PID"]) if os.environ.get(
            "COMMITTEE_TEACHER_PID") else None


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="committee-conformance-") as directory:
        yield directory


@pytest.fixture(scope="session")
def checkpoint(workdir):
    return processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "conformance", "--max-test", "500")


def _start(kind, checkpoint, workdir, *extra):
    common = ["--heartbeat-ms", str(HEARTBEAT_MS), "--max-test", "500", *extra]
    if kind == "c":
        return processes.c_teacher(checkpoint, workdir, *common)
    return processes.python_teacher(workdir, "--mlp", checkpoint, *common)


KINDS = ["external"] if os.environ.get("COMMITTEE_ENDPOINT") else ["c", "python"]


@pytest.fixture(scope="session", params=KINDS)
def kind(request):
    return request.param


_started = {}


def _target(kind, checkpoint, workdir, slow):
    if kind == "external":
        endpoint = os.environ.get("COMMITTEE_SLOW_ENDPOINT" if slow else "COMMITTEE_ENDPOINT")
        if not endpoint:
            pytest.skip("set COMMITTEE_SLOW_ENDPOINT to a slow instance for this test")
        return Target(kind, endpoint)
    key = (kind, slow)
    process = _started.get(key)
    if process is None or process.popen.poll() is not None:
        extra = ["--compute-delay-ms", str(SLOW_DELAY_MS), "--queue", str(SLOW_QUEUE)] \
            if slow else []
        process = _started[key] = _start(kind, checkpoint, workdir, *extra)
    return Target(kind, process.endpoint, process, HEARTBEAT_MS, SLOW_DELAY_MS if slow else 0)


@pytest.fixture
def teacher(kind, checkpoint, workdir):
    return _target(kind, checkpoint, workdir, slow=False)


@pytest.fixture
def slow_teacher(kind, checkpoint, workdir):
    return _target(kind, checkpoint, workdir, slow=True)


def pytest_sessionfinish(session, exitstatus):
    for process in _started.values():
        process.stop()

