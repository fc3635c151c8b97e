"""python3 -m committee report from real training runs (a DiverseDistill run of two C teachers
with filtering, and a run alone), opened in headless Chromium: every plot must load."""
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import processes

SUBSET = ["--max-train", "2000", "--max-test", "500"]


def train(workdir, name, *args):
    metrics = os.path.join(workdir, f"{name}.jsonl")
    done = subprocess.run(
        [os.path.join(processes.BIN, "student-trainer"), "train", "--view", "pool7", "--model",
         "mlp:49-32-10", "--batch", "64", "--http", "off", *SUBSET, "--epochs", "3",
         "--out", os.path.join(workdir, f"{name}.safetensors"), "--metrics", metrics, *args],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return metrics


def report(*args):
    return subprocess.run([processes.PYTHON, "-m", "committee", "report", *args],
                          capture_output=True, text=True, env=processes.python_env(),
                          cwd=processes.ROOT, timeout=300)


@pytest.fixture(scope="module")
def runs(workdir):
    fm_path = processes.fit_mlp(workdir, "mlp:784-64-10", "full", "fm-report", *SUBSET[2:])
    comp_path = processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "comp-report", *SUBSET[2:])
    fm = processes.c_teacher(fm_path, workdir, *SUBSET, "--name", "fm", "--role", "foundation",
                             "--http", "off")
    comp = processes.c_teacher(comp_path, workdir, *SUBSET, "--name", "comp", "--http", "off")
    try:
        dd = train(workdir, "report-dd", "--method", "diversedistill", "--dd-filter", "0.5",
                   "--cache", "off", "--teacher", f"fm={fm.endpoint}", "--teacher",
                   f"comp={comp.endpoint}")
    finally:
        assert fm.stop() == 0
        assert comp.stop() == 0
    alone = train(workdir, "report-ce", "--method", "ce")
    # Without the configuration line the trainer writes first, the report names the run by
    # its loss terms.
    with open(alone) as file:
        epochs = [line for line in file if '"epoch"' in line]
    with open(alone, "w") as file:
        file.write("".join(epochs))
    return dd, alone


def test_router_weights_are_in_the_metrics(runs):
    with open(runs[0]) as file:
        lines = [json.loads(line) for line in file if '"epoch"' in line]
    assert len(lines) == 3
    for line in lines:
        weights = [line["teachers"][name]["router_weight"] for name in ("fm", "comp")]
        assert all(0 <= weight <= 1 for weight in weights)
        assert abs(sum(weights) - 1) < 1e-3, weights  # every row routes between both


def test_report_page_and_plots_load_in_chromium(runs, workdir):
    out = os.path.join(workdir, "report")
    done = report(*runs, "--out", out)
    assert done.returncode == 0, done.stderr
    page = os.path.join(out, "index.html")
    assert done.stdout.strip() == page
    with open(page) as file:
        text = file.read()
    plots = re.findall(r'<img class="plot" src="([a-z]+\.png)"', text)
    assert plots == ["loss.png", "terms.png", "quality.png", "wait.png", "bytes.png",
                     "router.png", "skipped.png"]
    for plot in plots:
        with open(os.path.join(out, plot), "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "report-dd.jsonl" in text and "report-ce.jsonl" in text
    assert "<td>diversedistill</td>" in text  # from the trainer's configuration line
    assert "<td>terms ce</td>" in text  # no configuration: the terms
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (deploy/packages.txt lists it): the page was "
                    "written but not opened in a browser")
    with tempfile.TemporaryDirectory(prefix="committee-chromium-") as profile:
        shown = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom",
             "file://" + os.path.abspath(page)],
            capture_output=True, text=True, timeout=180)
    assert shown.returncode == 0, shown.stderr[-2000:]
    match = re.search(r'<p id="plot-check"[^>]*>plots loaded: (\d+) of (\d+)</p>', shown.stdout)
    assert match, shown.stdout[-2000:]
    assert match.groups() == (str(len(plots)), str(len(plots)))


def test_a_broken_plot_is_reported_as_missing(runs, workdir):
    """The page's own check can fail: a plot file gone shows as not loaded."""
    out = os.path.join(workdir, "report-broken")
    assert report(runs[1], "--out", out).returncode == 0
    os.unlink(os.path.join(out, "loss.png"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (deploy/packages.txt lists it)")
    with tempfile.TemporaryDirectory(prefix="committee-chromium-") as profile:
        shown = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom",
             "file://" + os.path.abspath(os.path.join(out, "index.html"))],
            capture_output=True, text=True, timeout=180)
    match = re.search(r'<p id="plot-check" class="missing">plots loaded: (\d+) of (\d+)</p>',
                      shown.stdout)
    assert match, shown.stdout[-2000:]
    assert int(match.group(1)) == int(match.group(2)) - 1


def test_bad_input_is_one_sentence(workdir):
    empty = os.path.join(workdir, "empty.jsonl")
    with open(empty, "w") as file:
        file.write('{"config": true}\n')
    done = report(empty, "--out", os.path.join(workdir, "report-empty"))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"python3 -m committee report: {empty} holds no epoch "
                                   "records (student-trainer --metrics FILE writes one per "
                                   "finished epoch)")
    garbled = os.path.join(workdir, "garbled.jsonl")
    with open(garbled, "w") as file:
        file.write('{"epoch": 1, "loss": 1.0}\nnot json\n{"epoch": 2, "loss": 0.5}\n')
    done = report(garbled, "--out", os.path.join(workdir, "report-garbled"))
    assert done.returncode == 1 and f"{garbled} line 2 is not JSON" in done.stderr
    missing = os.path.join(workdir, "nothing-here.jsonl")
    done = report(missing, "--out", os.path.join(workdir, "report-missing"))
    assert done.returncode == 1 and f"cannot read {missing}" in done.stderr
    assert report("--out", os.path.join(workdir, "x")).returncode == 2  # usage
