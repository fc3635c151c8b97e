"""The fast slice of `make bench-parity` (bench/parity): 20 steps of teacher-server fit and
of student-trainer ce, kd and avg-kd (2560 training examples, one epoch) replayed in PyTorch
from the C runs' initial weights, batches and recorded teacher outputs: every per-step loss
agrees within 1e-4 relative, every learning rate with common/cm_schedule.c recomputed, and
single steps taken by PyTorch from C's own state give C's next state.  The last tests show
that the comparison can fail: an off-by-one schedule, a different AdamW epsilon, a 0.1%
learning rate or decayed biases are all caught."""
import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "parity"))
import parity  # noqa: E402
import run_parity  # noqa: E402

SCHEDULE = ("cosine", 2e-3, -1)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parity"))
    path = os.path.join(out, "rows.json")
    assert run_parity.main(["--quick", "--workdir", out, "--json", path]) == 0
    with open(path) as file:
        rows = {row["method"].split()[0]: row for row in json.load(file)}
    return out, rows


@pytest.fixture(scope="module")
def pool7():
    return parity.load_view("pool7", max_train=2560, max_test=1000)


@pytest.mark.parametrize("method", ["fit", "ce", "kd", "avg-kd"])
def test_losses_agree_with_pytorch(quick, method):
    row = quick[1][method]
    assert row["steps"] == row["total_steps"] == 20
    assert row["max_rel_loss_diff"] < 1e-4, row
    assert row["first_step_beyond_1e-4"] is None, row
    assert row["max_rel_lr_diff"] < 1e-6, row
    assert abs(row["accuracy_diff_points"]) <= 0.2, row


@pytest.mark.parametrize("method", ["ce", "kd", "avg-kd"])
def test_resynchronised_steps_agree(quick, method):
    resync = quick[1][method]["resync"]
    assert sorted(resync) == ["11", "20"]
    assert max(resync.values()) < 1e-4, resync


def test_methods_differ(quick):
    """ce, kd (one teacher) and avg-kd (two) trained on the same batches from the same
    weights end at different losses: the rows compare three different recipes."""
    rows = quick[1]
    finals = [rows[method]["c_final_loss"] for method in ("ce", "kd", "avg-kd")]
    assert len({round(loss, 3) for loss in finals}) == 3, finals


def test_an_off_by_one_schedule_is_caught(quick, pool7):
    """Replayed with the rate of the next step, the ce run breaks 1e-4 within 20 steps."""
    row = quick[1]["ce"]
    steps = parity.read_steps(row["steps_path"])
    _, losses, rates = parity.replay("ce", row["initial"], steps, pool7[0], pool7[1],
                                     SCHEDULE, len(steps), step_offset=1)
    _, loss_diff, lr_diff = parity.compare(steps, losses, rates, 20)
    assert loss_diff > 1e-4 and lr_diff > 1e-6


def test_adamw_details_are_caught(quick, pool7, monkeypatch):
    """One resynchronised kd step (C state after 10 steps -> after 11) agrees to rounding;
    with eps 1e-7, a rate 0.1% high or weight decay on the biases it is beyond the 1e-4
    tolerance."""
    workdir, rows = quick
    row = rows["kd"]
    steps = parity.read_steps(row["steps_path"])
    before, after = (os.path.join(workdir, f"resync-kd-{k}.safetensors.state")
                     for k in (10, 11))
    teacher = (parity.teacher_logits(os.path.join(workdir, "student.record.safetensors"),
                                     "a"),)

    def step(schedule=SCHEDULE):
        return parity.one_step("kd", row["initial"], before, after, steps[10], pool7[0],
                               pool7[1], schedule, len(steps), teachers=teacher)[0]

    good = step()
    assert good < 1e-5
    assert step(("cosine", 2e-3 * 1.001, -1)) > 1e-4
    with monkeypatch.context() as patch:
        patch.setattr(parity, "EPSILON", 1e-7)
        assert step() > 1e-4
    with monkeypatch.context() as patch:
        patch.setattr(parity, "adamw", lambda model, decay: torch.optim.AdamW(
            model.parameters(), lr=1e-3, betas=parity.BETAS, eps=parity.EPSILON,
            weight_decay=decay))
        assert step() > 1e-4
