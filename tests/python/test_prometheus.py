"""Prometheus to the ecosystem's conventions, checked with the official parser
(python3-prometheus-client) on the /metrics of a real teacher-server, a Python teacher and a
student-trainer during a run: every counter ends in _total, units end the names, every family
has HELP and TYPE, no series twice, committee_teacher_info on teachers and trainer, every
error code at 0 from the start, and the trainer's /readyz says why it is not ready yet."""
import os
import re
import socket
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families

from committee import wire
import processes

SUBSET = ["--max-train", "2000", "--max-test", "500"]
UNITS = ("seconds", "bytes")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_conventions(text):
    """Asserts the conventions on one /metrics text; returns {family name: family}."""
    types, helps = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"TYPE of {name} twice"
            types[name] = kind
        elif line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
    assert types, "no metrics at all"
    for name, kind in types.items():
        assert name in helps, f"{name} has no HELP"
        assert name.startswith("committee_"), name
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} does not end in _total"
        base = name[:-len("_total")] if name.endswith("_total") else name
        for unit in UNITS:  # a unit ends the name (before _total): x_bytes, not x_bytes_peak
            if unit in base.split("_"):
                assert base.endswith("_" + unit), f"{name}: the unit {unit} is not at the end"
    families, seen = {}, set()
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, f"series {key} twice"
            seen.add(key)
            assert sample.name.startswith(family.name)
    return families


def samples(families, name):
    """{label tuple: value} of family `name` (the parser drops a counter's _total)."""
    family = families[name[:-len("_total")] if name.endswith("_total") else name]
    return {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples}


def assert_errors_at_zero(families):
    errors = samples(families, "committee_teacher_errors_total")
    codes = {dict(labels)["code"] for labels in errors}
    assert codes == set(wire.CODES), f"error codes shown: {sorted(codes)}"
    assert all(value == 0 for value in errors.values()), errors


def assert_info(families, name, role, model, view):
    info = samples(families, "committee_teacher_info")
    key = tuple(sorted({"name": name, "role": role, "model": model, "view": view}.items()))
    assert info.get(key) == 1, f"committee_teacher_info lacks {key}: {info}"


def test_python_teacher_follows_the_conventions(workdir):
    path = processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "prom-py", *SUBSET[2:])
    teacher = processes.python_teacher(workdir, "--mlp", path, "--name", "pyt", *SUBSET)
    try:
        status, text = processes.http_get(teacher.http, "/metrics")
    finally:
        assert teacher.stop() == 0
    assert status == 200
    families = check_conventions(text)
    assert_errors_at_zero(families)
    assert "committee_teacher_sent_bytes" in families
    assert not any(name.endswith("_created") for name in families), sorted(families)
    info = samples(families, "committee_teacher_info")
    assert [dict(labels)["name"] for labels in info] == ["pyt"]


def test_teacher_server_and_trainer_follow_the_conventions(workdir):
    path = processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "prom-c", *SUBSET[2:])
    teacher_port, http_port = free_port(), free_port()
    trainer_http = f"127.0.0.1:{http_port}"
    log_path = os.path.join(workdir, "prom-trainer.log")
    # The trainer starts first: its teacher is not there yet, so it waits for the Hello.
    with open(log_path, "w") as log:
        trainer = subprocess.Popen(
            [os.path.join(processes.BIN, "student-trainer"), "train", "--view", "pool7",
             "--model", "mlp:49-32-10", "--batch", "64", *SUBSET, "--epochs", "5",
             "--method", "kd", "--cache", "off", "--teacher-timeout-ms", "120000",
             "--teacher", f"comp=tcp://127.0.0.1:{teacher_port}", "--http", trainer_http,
             "--out", os.path.join(workdir, "prom.safetensors"), "--metrics",
             os.path.join(workdir, "prom.jsonl")],
            stdout=log, stderr=subprocess.STDOUT, env=processes.python_env())
    teacher = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, reason = processes.http_get(trainer_http, "/readyz")
                break
            except OSError:
                assert trainer.poll() is None and time.monotonic() < deadline, \
                    open(log_path).read()
                time.sleep(0.05)
        assert (status, reason) == (503, "waiting for every teacher's Hello\n")
        # A slow teacher (50 ms a request, nothing cached): the run lasts several seconds.
        teacher = processes.Process(
            [os.path.join(processes.BIN, "teacher-server"), "serve", "--model", path,
             "--bind", f"tcp://127.0.0.1:{teacher_port}", "--http", "127.0.0.1:0",
             "--name", "comp", "--compute-delay-ms", "50", *SUBSET],
            os.path.join(workdir, "prom-teacher.log"))
        status, text = processes.http_get(teacher.http, "/metrics")
        assert status == 200
        families = check_conventions(text)  # a fresh teacher: every error code at 0
        assert_errors_at_zero(families)
        assert_info(families, "comp", "complementary", "mlp:49-64-10", "pool7")
        assert "committee_teacher_sent_bytes" in families
        while processes.http_get(trainer_http, "/readyz")[0] != 200:
            assert trainer.poll() is None and time.monotonic() < deadline, open(log_path).read()
            time.sleep(0.02)
        status, text = processes.http_get(trainer_http, "/metrics")
        assert status == 200
        families = check_conventions(text)
        assert_info(families, "comp", "complementary", "mlp:49-64-10", "pool7")
        for name in ("committee_trainer_wait_seconds_total",
                     "committee_trainer_teacher_down_events_total",
                     "committee_trainer_teacher_timeouts_total",
                     "committee_trainer_teacher_protocol_errors_total"):
            assert samples(families, name), f"{name} missing at the start"
        assert samples(families, "committee_trainer_teacher_timeouts_total") == \
            {(("teacher", "comp"),): 0.0}
        if "committee_trainer_test_accuracy" in families:  # only once an epoch was scored
            assert re.search(r"epoch [1-5]/5 .* test acc", open(log_path).read())
        assert trainer.wait(600) == 0, open(log_path).read()
        status, text = processes.http_get(teacher.http, "/metrics")
        check_conventions(text)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        if teacher:
            assert teacher.stop() == 0
