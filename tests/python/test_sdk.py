"""committee.Teacher, committee.Client and python3 -m committee, through real sockets."""
import contextlib
import os
import subprocess
import threading
import time

import numpy as np
import pytest

import committee
import forward_fixture
import processes
from committee import wire


@contextlib.contextmanager
def serving(teacher, http="127.0.0.1:0"):
    """Runs teacher.serve() on a thread (no signal handlers there) until the block ends."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "code", teacher.serve(bind="tcp://127.0.0.1:0", http=http)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not teacher.ready and time.monotonic() < deadline:
        time.sleep(0.02)
    assert teacher.ready, "the teacher did not start"
    try:
        yield teacher
    finally:
        teacher.stop()
        thread.join(60)
        assert result.get("code") == 0


def make_teacher(pool7, forward=forward_fixture.forward, **options):
    options.setdefault("outputs", {"logits": (10,), "hidden": (16,)})
    return committee.Teacher(name="lin", role="complementary", forward=forward,
                             dataset=pool7, **options)


def test_teacher_answers_its_forward(pool7):
    with serving(make_teacher(pool7)) as teacher, \
            committee.Client(teacher.endpoint) as client:
        hello = client.hello()
        assert hello.peer_name == "lin" and hello.view == "pool7"
        assert hello.dataset_fingerprint == pool7.fingerprint
        ids = [3, 1, 4, 1, 5]
        result = client.query(ids, ["hidden", "logits"], "test")
        expected = forward_fixture.forward(pool7.splits["test"].inputs[ids])
        for name in ("logits", "hidden"):
            assert np.array_equal(result[name], expected[name].astype(np.float32))


def test_forward_over_ids(pool7):
    teacher = make_teacher(pool7, forward_fixture.by_ids, takes="ids",
                           outputs={"logits": (10,)})
    with serving(teacher), committee.Client(teacher.endpoint) as client:
        result = client.query([7, 300], ["logits"], "test")["logits"]
    assert result[:, 0].tolist() == [7, 300] and result[0, 1] == 1.0


@pytest.mark.parametrize("forward, words", [(forward_fixture.broken, "always fails"),
                                            (forward_fixture.wrong_shape, "shape")])
def test_a_failing_forward_is_an_internal_error_and_the_teacher_goes_on(pool7, forward, words):
    teacher = make_teacher(pool7, forward, outputs={"logits": (10,)})
    with serving(teacher), committee.Client(teacher.endpoint) as client:
        for _ in range(2):
            with pytest.raises(committee.TeacherError) as caught:
                client.query([0], ["logits"])
            assert caught.value.code == "INTERNAL" and words in caught.value.message
        with committee.Client(teacher.endpoint) as other:
            assert other.hello().peer_name == "lin"


def test_metrics_and_health(pool7):
    teacher = make_teacher(pool7)
    with serving(teacher), committee.Client(teacher.endpoint) as client:
        client.query(range(10), ["logits"])
        with pytest.raises(committee.TeacherError):
            client.query([99999], ["logits"])
        assert processes.http_get(teacher.http_address, "/healthz")[0] == 200
        assert processes.http_get(teacher.http_address, "/readyz") == (200, "ready\n")
        status, text = processes.http_get(teacher.http_address, "/metrics")
    assert status == 200
    assert processes.metric(text, "committee_teacher_requests_total") == 2
    assert processes.metric(text, "committee_teacher_examples_total") == 10
    assert processes.metric(text, 'committee_teacher_errors_total{code="OUT_OF_RANGE"}') == 1


def test_head_lending(pool7):
    head = (forward_fixture.HEAD.T.copy(), np.zeros(10, np.float32))
    teacher = make_teacher(pool7, head={"hidden": head})
    with serving(teacher), committee.Client(teacher.endpoint) as client:
        assert list(client.hello().heads) == ["hidden"]
        weight, bias = client.head("hidden")
        assert np.array_equal(weight, head[0]) and np.array_equal(bias, head[1])
        with pytest.raises(committee.TeacherError, match="NOT_FOUND"):
            client.head("logits")


def test_bad_arguments_are_refused(pool7):
    with pytest.raises(ValueError, match="logits"):
        make_teacher(pool7, outputs={"hidden": (16,)})
    with pytest.raises(ValueError, match="role"):
        committee.Teacher(name="x", role="boss", forward=forward_fixture.forward,
                          outputs={"logits": 10}, dataset=pool7)
    with pytest.raises(ValueError, match="loopback"):
        make_teacher(pool7).serve(bind="tcp://0.0.0.0:0")


def test_bf16_rounding_matches_the_c_rules():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.4e38, np.inf, -np.inf, 0.0, -0.0,
                       1e-40], dtype=np.float32)
    halves = wire.f32_to_bf16(values)
    # 1 + 2^-8 is a tie: to even (1.0); 1 + 3 * 2^-8 rounds up; huge values round to inf.
    assert halves[:4].tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020]
    assert halves[4] == 0x7F80 and halves[5] == 0x7F80 and halves[6] == 0xFF80
    nan = wire.f32_to_bf16(np.array([np.nan], np.float32))
    assert np.isnan(wire.bf16_to_f32(nan.tobytes()))[0]


def run_cli(*args, timeout=60):
    return subprocess.run([processes.PYTHON, "-m", "committee", *args], capture_output=True,
                          text=True, env=processes.python_env(), timeout=timeout)


def test_cli_help_and_usage_errors():
    helped = run_cli("serve", "--help")
    assert helped.returncode == 0 and "--forward MODULE:CALLABLE" in helped.stdout
    assert "--outputs" in helped.stdout and "--bind" in helped.stdout
    assert run_cli().returncode == 2
    missing = run_cli("serve", "--name", "x", "--view", "pool7")
    assert missing.returncode == 2 and "--forward" in missing.stderr
    bad = run_cli("serve", "--forward", "nosuchmodule_xyz:f", "--name", "x", "--view", "pool7",
                  "--outputs", "logits:10")
    assert bad.returncode == 1 and "nosuchmodule_xyz" in bad.stderr


def test_cli_serves_a_forward_and_stops_with_bye(workdir, pool7):
    fixture = os.path.join(os.path.dirname(__file__), "forward_fixture.py")
    teacher = processes.python_teacher(
        workdir, "--forward", f"{fixture}:forward", "--name", "lin", "--role", "complementary",
        "--view", "pool7", "--outputs", "logits:10,hidden:16", "--max-train", "2000",
        "--max-test", "500")
    client = committee.Client(teacher.endpoint, timeout_ms=60000)
    try:
        hello = client.hello()
        assert hello.role == wire.pb.ROLE_COMPLEMENTARY
        assert hello.dataset_fingerprint == pool7.fingerprint
        result = client.query([0, 1], ["logits"])
        expected = forward_fixture.forward(pool7.splits["train"].inputs[[0, 1]])["logits"]
        assert np.array_equal(result["logits"], expected)
        teacher.popen.send_signal(2)  # SIGINT
        deadline = time.monotonic() + 60
        while not client.byes and time.monotonic() < deadline:
            try:
                client.receive(1.0)
            except TimeoutError:
                pass
        assert client.byes == ["teacher is shutting down"]
        assert teacher.popen.wait(60) == 0
    finally:
        client.close(bye=False)
        teacher.stop()


def test_query_command_against_the_c_teacher(workdir):
    path = processes.fit_mlp(workdir, "mlp:49-8-10", "pool7", "query", "--max-test", "500")
    teacher = processes.c_teacher(path, workdir)
    try:
        asked = run_cli("query", "--connect", teacher.endpoint, "--ids", "0-2", "--outputs",
                        "logits,hidden")
    finally:
        teacher.stop()
    assert asked.returncode == 0, asked.stderr
    assert "teacher 'query' (mlp:49-8-10)" in asked.stdout and "hidden:" in asked.stdout


def test_curve_allowlist(workdir, pool7):
    keygen = os.path.join(processes.BIN, "teacher-server")
    names = ("teacher", "trainer", "stranger")
    base = {name: os.path.join(workdir, f"curve-{name}") for name in names}
    for name in names:
        if not os.path.exists(base[name] + ".key"):
            subprocess.run([keygen, "keygen", "--out", base[name]], check=True,
                           capture_output=True)
    allowed = os.path.join(workdir, "curve-allowed")
    os.makedirs(allowed, exist_ok=True)
    with open(base["trainer"] + ".pub") as source, open(os.path.join(allowed, "trainer.pub"),
                                                         "w") as target:
        target.write(source.read())
    teacher = make_teacher(pool7, curve_secret_key=base["teacher"] + ".key", allow_keys=allowed)
    with serving(teacher):
        with committee.Client(teacher.endpoint, curve_secret_key=base["trainer"] + ".key",
                              teacher_key=base["teacher"] + ".pub") as client:
            assert client.hello().peer_name == "lin"
            assert client.query([0], ["logits"])["logits"].shape == (1, 10)
        with committee.Client(teacher.endpoint, curve_secret_key=base["stranger"] + ".key",
                              teacher_key=base["teacher"] + ".pub", timeout_ms=2000) as client:
            with pytest.raises(TimeoutError):
                client.hello()
        with committee.Client(teacher.endpoint, timeout_ms=2000) as plaintext:
            with pytest.raises(TimeoutError):
                plaintext.hello()
        # The C client speaks to the Python CURVE teacher too.
        asked = subprocess.run([keygen, "query", "--connect", teacher.endpoint,
                                "--curve-secret-key", base["trainer"] + ".key", "--teacher-key",
                                base["teacher"] + ".pub", "--ids", "0-1"],
                               capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0, asked.stderr
        refused = teacher.m_errors.labels(code="UNAUTHORIZED")._value.get()
    assert refused >= 1


def test_a_silent_peer_with_unread_replies_is_not_forgotten(pool7):
    """Forgetting a silent peer whose replies still sit in ZeroMQ's queue would forget those
    bytes, and its next request would start a fresh --max-queued-mb budget: a peer that never
    reads and pauses longer than the silence limit could grow the teacher without bound."""
    from committee import teacher as teacher_module

    class Unsent:
        done = False

    teacher = make_teacher(pool7, heartbeat_ms=100)
    teacher.peers = {}  # what serve() starts with
    long_ago = time.monotonic() - 60
    flooder = teacher.peers[b"flooder"] = teacher_module._Peer(b"flooder", long_ago)
    flooder.tracked.append((Unsent(), 1 << 20))
    teacher.peers[b"gone"] = teacher_module._Peer(b"gone", long_ago)
    for peer in teacher.peers.values():
        peer.last_seen = peer.last_sent = long_ago
    teacher._heartbeats()
    assert list(teacher.peers) == [b"flooder"]
    assert teacher.peers[b"flooder"].queued_bytes() == 1 << 20
