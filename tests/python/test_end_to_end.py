"""End to end through real processes: student-trainer against Python and C teachers."""
import json
import os
import subprocess

import numpy as np

import committee
import processes
from committee import safetensors

SUBSET = ["--max-train", "2000", "--max-test", "500"]


def train(workdir, name, teachers, *method):
    out = os.path.join(workdir, f"{name}.safetensors")
    metrics = os.path.join(workdir, f"{name}.jsonl")
    argv = [os.path.join(processes.BIN, "student-trainer"), "train", "--view", "pool7",
            "--model", "mlp:49-32-10", "--batch", "64", "--lr", "3e-3", "--http", "off",
            *SUBSET, "--out", out, "--metrics", metrics, *method]
    for teacher_name, endpoint in teachers.items():
        argv += ["--teacher", f"{teacher_name}={endpoint}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with open(metrics) as file:
        # the epoch lines; the first line of a run is its configuration ("config")
        lines = [json.loads(line) for line in file if '"epoch"' in line]
    return out, lines


def test_kd_student_is_byte_identical_with_a_python_teacher(workdir):
    """The Python teacher serves the C MLP checkpoint (read with committee.safetensors, run
    through the same cblas_sgemm calls): its outputs are the C teacher's bits, so the
    student trained by kd is the same file."""
    path = processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "comp", *SUBSET[2:])
    c_teacher = processes.c_teacher(path, workdir, *SUBSET, "--http", "off")
    py_teacher = processes.python_teacher(workdir, "--mlp", path, *SUBSET, "--http", "off")
    try:
        ids = np.arange(2000)
        with committee.Client(c_teacher.endpoint, timeout_ms=60000) as c_client, \
                committee.Client(py_teacher.endpoint, timeout_ms=60000) as py_client:
            assert c_client.hello() == py_client.hello()
            c_out = c_client.query(ids, ["logits", "hidden"])
            py_out = py_client.query(ids, ["logits", "hidden"])
        for name in ("logits", "hidden"):
            difference = float(np.abs(c_out[name] - py_out[name]).max())
            assert difference == 0.0, f"{name} differs by up to {difference}"
        method = ["--method", "kd", "--epochs", "2"]
        from_c, _ = train(workdir, "kd-c", {"comp": c_teacher.endpoint}, *method)
        from_python, _ = train(workdir, "kd-python", {"comp": py_teacher.endpoint}, *method)
    finally:
        assert py_teacher.stop() == 0
        assert c_teacher.stop() == 0
    # The same student, byte for byte, apart from the saved configuration: it names each run's
    # --out, --metrics and teacher endpoint.
    tensors_c, metadata_c = safetensors.load(from_c)
    tensors_python, metadata_python = safetensors.load(from_python)
    assert tensors_c.keys() == tensors_python.keys()
    for name in tensors_c:
        assert tensors_c[name].tobytes() == tensors_python[name].tobytes(), name
    assert json.loads(metadata_c.pop("config"))["teacher"] != []
    metadata_python.pop("config")
    assert metadata_c == metadata_python


def test_diversedistill_with_a_python_and_a_c_teacher(workdir):
    """A committee of a Python foundation teacher (full view) and a C complementary teacher
    (pool7) trains with filtering; the Python teacher's own /metrics counts exactly the
    examples the trainer received from it, and the skipped ones were never computed."""
    fm_path = processes.fit_mlp(workdir, "mlp:784-64-10", "full", "fm-dd", *SUBSET[2:])
    comp_path = processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "comp-dd", *SUBSET[2:])
    fm = processes.python_teacher(workdir, "--mlp", fm_path, "--name", "fm", "--role",
                                  "foundation", *SUBSET)
    comp = processes.c_teacher(comp_path, workdir, *SUBSET, "--name", "comp")
    try:
        _, lines = train(workdir, "dd", {"fm": fm.endpoint, "comp": comp.endpoint},
                         "--method", "diversedistill", "--dd-filter", "0.5", "--epochs", "3",
                         "--cache", "off")
        fm_metrics = processes.http_get(fm.http, "/metrics")[1]
        comp_metrics = processes.http_get(comp.http, "/metrics")[1]
    finally:
        assert fm.stop() == 0
        assert comp.stop() == 0
    fm_computed = processes.metric(fm_metrics, "committee_teacher_examples_total")
    comp_computed = processes.metric(comp_metrics, "committee_teacher_examples_total")

    def teacher(line, name, key):
        return line["teachers"][name][key]

    assert lines[-1]["test_accuracy"] > 0.5
    assert teacher(lines[0], "fm", "filter_skipped") == 0  # epoch 1 warms up unfiltered
    skipped = sum(teacher(lines[epoch], name, "filter_skipped")
                  for epoch in (1, 2) for name in ("fm", "comp"))
    needed = sum(teacher(lines[epoch], name, "filter_needed")
                 for epoch in (1, 2) for name in ("fm", "comp"))
    assert needed == 2 * 2 * 2000
    assert skipped > needed / 5, f"filtering skipped only {skipped} of {needed} pairs"
    fm_received = teacher(lines[-1], "fm", "examples_received")
    comp_received = teacher(lines[-1], "comp", "examples_received")
    assert fm_computed == fm_received  # the Python teacher's own counter
    assert comp_computed == comp_received
    assert fm_received + comp_received == 3 * 2 * 2000 - skipped
    print(f"\nfm (Python) computed {fm_computed:.0f}, comp (C) {comp_computed:.0f}, "
          f"skipped {skipped} of {needed} pairs in the filtered epochs")
