"""bench/quality.sh end to end in its smoke mode (QUALITY_SMOKE=1), through the real binaries.

The smoke mode shrinks everything (2000 training / 500 test images, 1-epoch teachers, 2-epoch
students, 1 seed, one-point grids) but runs every phase of the real script: the committee fits
(CNN fm, ViT, comp7, comp14), the per-table ce recipe on the holdout, the prefill records, the
tuning, the four tables, the three-teacher table and the ablation, and report.py. Checked:
  - the report has every table, every method row, the recipes and the claims answered yes/no;
  - choices never saw test: every tuning run trained with --holdout > 0, every table run with
    --holdout 0; replayed runs read a prefill record, filtered runs asked the live teachers
    (--cache off) and skipped outputs;
  - a second invocation trains nothing (no run's metrics file is rewritten).
About 70-80 s on the 2-core machine (mostly process start-up and the teachers' fits).
"""
import json
import os
import shutil
import subprocess

import pytest

import processes

ROOT = processes.ROOT
SCRIPT = os.path.join(ROOT, "bench", "quality.sh")
TABLES = ["A7-full", "A7-few", "A14-full", "A14-few"]
METHODS = ["ce", "kd-fm", "kd-comp", "avg-kd", "ca-mkd", "fitnet-fm", "dd-fm", "dd-both", "dd-filter"]

pytestmark = pytest.mark.skipif(not (shutil.which("jq") and shutil.which("bc")),
                                reason="bench/quality.sh needs jq and bc")


def invoke(work):
    env = dict(os.environ, QUALITY_SMOKE="1", QUALITY_WORK=work,
               QUALITY_RESULTS=os.path.join(work, "results"), BIN=processes.BIN)
    done = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def smoke(workdir):
    work = os.path.join(workdir, "quality-smoke")
    log = invoke(work)
    with open(os.path.join(work, "results", "quality.json")) as handle:
        report = json.load(handle)
    with open(os.path.join(work, "results", "quality.md")) as handle:
        markdown = handle.read()
    return work, log, report, markdown


def args_of(work, name):
    with open(os.path.join(work, "runs", name + ".args")) as handle:
        return handle.read().split()


def test_every_table_row_and_claim_is_there(smoke):
    work, log, report, markdown = smoke
    assert "FAILED" not in log
    for key in TABLES:
        rows = report["tables"][key]["rows"]
        assert sorted(rows) == sorted(METHODS), key
        assert all(row["seeds_done"] == 1 for row in rows.values())
        assert 0 < rows["dd-filter"]["skipped_filtered_epochs"] < 1
        filtered = rows["dd-filter"]  # what live --cache off teachers would have computed
        assert 0 < filtered["teacher_outputs"] < filtered["asked_unfiltered"], key
        claims = report["claims"][key]
        assert len(claims) == 3 and all(isinstance(c["answer"], bool) for c in claims), claims
    three = report["tables"]["A14-few-three"]["rows"]
    assert {"dd-three", "dd-three-filter", "avg-kd3", "ca-mkd3", "kd-vit"} <= set(three)
    assert set(three["dd-three-filter"]["skipped_per_teacher"]) == {"fm", "vit", "comp"}
    assert len(report["claims"]["A14-few-three"]) == 3
    for key in TABLES:
        assert report["recipes"][key]["chosen"]["epochs"] == 2
    for heading in ["## A7 (pool7", "## A14 (pool14", "## Three teachers", "## The three claims",
                    "## Student recipes", "## Ablation", "SMOKE RUN"]:
        assert heading in markdown, heading
    assert markdown.count(": **yes**: ") + markdown.count(": **no**: ") == 15
    assert set(report["prefill"]) == {"fm", "fm-comp7", "fm-comp14", "fm-vit-comp14"}


def test_choices_never_see_test_and_teachers_are_asked_once(smoke):
    work, _, report, _ = smoke
    names = [f[:-5] for f in os.listdir(os.path.join(work, "runs")) if f.endswith(".args")]
    tuning = [n for n in names if n.startswith("tune-")]
    table = [n for n in names if n.startswith(("A7-", "A14-", "abl-"))]
    assert len(tuning) >= 8 + 4 and len(table) == 4 * 9 + 5 + 5
    for name in tuning:
        args = args_of(work, name)
        assert int(args[args.index("--holdout") + 1]) > 0, name
        if name.startswith("tune-ddf-"):  # theta is chosen live, the teachers' savings real
            assert args[0] == "train" and args[args.index("--cache") + 1] == "off", name
    for name in table:
        args = args_of(work, name)
        assert args[args.index("--holdout") + 1] == "0", name
        # live: no teacher (ce) and the cheap comp-only ablation; the rest replays, filtered
        # and interactive runs too (--dd-filter on the record; the record keeps the heads)
        live = name.endswith("-ce-s1") or "comp-only" in name
        if "filter" in name:
            assert "--dd-filter" in args and ("--cache" in args) == live, name
        assert args[0] == ("train" if live else "replay"), name
        if not live:  # trains from the committee's one prefill record
            record = args[args.index("--record") + 1]
            assert record.startswith(os.path.join(work, "records")) and os.path.exists(record)
    for committee, received in report["prefill"].items():
        assert set(received["received"].values()) == {2000}, committee


def test_rerun_trains_nothing(smoke):
    work, _, _, _ = smoke
    runs = os.path.join(work, "runs")
    before = {f: os.stat(os.path.join(runs, f)).st_mtime_ns for f in os.listdir(runs) if f.endswith(".jsonl")}
    log = invoke(work)
    assert "(0 runs trained by this invocation)" in log, log[-2000:]
    assert "not refitting" in log
    after = {f: os.stat(os.path.join(runs, f)).st_mtime_ns for f in before}
    assert before == after
