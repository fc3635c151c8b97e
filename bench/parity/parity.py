"""PyTorch parity: the C trainers against the same recipe in PyTorch (Debian's python3-torch).

The C side writes what the run starts from and what it did: `--save-initial FILE` (the
initialized model, the same safetensors layout as a checkpoint) and `--log-steps FILE` (one
JSON line per optimizer step: step, epoch, lr, the loss and its terms, and the batch's
training rows in order).  The teacher outputs the C student trained on are in its
`--record` file.  This module replays such a run in PyTorch from the same weights, on the
same batches, with the same loss, torch.optim.AdamW (weights decayed, biases not, as
common/cm_model.c marks them) and the learning rate of common/cm_schedule.c recomputed here
(and checked against the C log), and compares the per-step losses and the final test
accuracy.

Pieces: Run (a C log), torch_mlp, schedule_lr, replay (the PyTorch run), compare; main()
is `make bench-parity` (bench/parity/README.md).
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from committee import data as committee_data
from committee import safetensors

torch.set_num_threads(1)

# common/cm_adamw.c's defaults; the trainers change only the rate and the weight decay.
BETAS, EPSILON = (0.9, 0.999), 1e-8


# ---- The C side's record of a run ----

def read_steps(path):
    """The --log-steps lines of a C run, in step order."""
    with open(path) as file:
        steps = [json.loads(line) for line in file if line.strip()]
    for index, step in enumerate(steps):
        if step["step"] != index + 1:
            raise ValueError(f"{path}: line {index + 1} is step {step['step']}")
    return steps


def read_metrics(path):
    """The per-epoch JSON lines of student-trainer --metrics."""
    with open(path) as file:
        return [json.loads(line) for line in file if '"epoch"' in line]  # not the config line


def teacher_logits(record_path, name):
    """float32 [train examples, classes] logits of teacher `name` in a --record file."""
    tensors, metadata = safetensors.load(record_path)
    if metadata.get("kind") != "committee-teacher-cache-1":
        raise ValueError(f"{record_path} is not a trainer record")
    if not tensors[f"{name}/logits.has"].all():
        raise ValueError(f"{record_path} lacks logits of teacher '{name}' for some examples")
    return np.ascontiguousarray(tensors[f"{name}/logits"], dtype=np.float32)


# ---- The model ----

class Mlp(torch.nn.Module):
    """common/cm_model.c's mlp: fc0 .. fcL, pre = x·Wᵀ + b, ReLU between the layers."""

    def __init__(self, path):
        super().__init__()
        tensors, metadata = safetensors.load(path)
        if not metadata.get("model", "").startswith("mlp:"):
            raise ValueError(f"{path} holds model '{metadata.get('model')}', not an mlp")
        self.spec = metadata["model"]
        layers = []
        while f"fc{len(layers)}.weight" in tensors:
            weight = tensors[f"fc{len(layers)}.weight"]
            bias = tensors[f"fc{len(layers)}.bias"]
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
                layer.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))
            layers.append(layer)
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, inputs):
        for index, layer in enumerate(self.layers):
            inputs = layer(inputs)
            if index + 1 < len(self.layers):
                inputs = torch.relu(inputs)
        return inputs


def adamw(model, weight_decay):
    """torch.optim.AdamW with the C trainers' settings: decay on weights only."""
    weights = [layer.weight for layer in model.layers]
    biases = [layer.bias for layer in model.layers]
    return torch.optim.AdamW([{"params": weights, "weight_decay": weight_decay},
                              {"params": biases, "weight_decay": 0.0}],
                             lr=1e-3, betas=BETAS, eps=EPSILON)


# ---- common/cm_schedule.c, recomputed ----

def schedule_warmup(kind, total_steps, warmup_steps=-1):
    warmup = warmup_steps
    if warmup < 0:
        warmup = {"constant": 0, "cosine": min(total_steps // 20, 200),
                  "onecycle": int(0.3 * total_steps)}[kind]
    return min(warmup, total_steps)


def schedule_lr(kind, peak, step, total_steps, warmup_steps=-1):
    """The rate of 0-based `step` as cm_schedule_lr computes it (double, rounded to float)."""
    peak = float(np.float32(peak))
    warmup = schedule_warmup(kind, total_steps, warmup_steps)

    def between(start, end, progress):
        progress = min(max(progress, 0.0), 1.0)
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    if kind in ("constant", "cosine"):
        if step < warmup:
            return float(np.float32(peak * (step + 1) / warmup))
        if kind == "constant":
            return peak
        final = peak * float(np.float32(0.1))
        return float(np.float32(between(peak, final,
                                        (step - warmup) / max(total_steps - warmup, 1))))
    start = peak * float(np.float32(1.0 / 25.0))
    final = peak * float(np.float32(np.float32(1.0 / 25.0) / np.float32(1e4)))
    if step < warmup:
        return float(np.float32(between(start, peak, step / warmup)))
    fall = total_steps - 1 - warmup
    if fall <= 0:
        return peak
    return float(np.float32(between(peak, final, (step - warmup) / fall)))


# ---- The PyTorch run ----

def loss_of(method, logits, labels, targets, temperature, kd_weight):
    """The trainer's loss (student_trainer/trainer_method.c): (1-w)·CE + w·T²·KL(p_t^T ‖ p_s^T)
    with the batch mean; ce is w = 0; the target of avg-kd is the mean of the teachers'
    softmax(z/T).  `targets` is that target distribution (None for ce and fit)."""
    if method in ("ce", "fit"):
        return F.cross_entropy(logits, labels)
    log_student = F.log_softmax(logits / temperature, dim=1)
    kl = F.kl_div(log_student, targets, reduction="batchmean")
    return (1.0 - kd_weight) * F.cross_entropy(logits, labels) + \
        kd_weight * temperature * temperature * kl


def target_probs(teachers, rows, temperature, dtype=torch.float32):
    """Mean over `teachers` (float32 logit arrays) of softmax(z/T) at `rows`."""
    probs = [F.softmax(torch.from_numpy(logits[rows]).to(dtype) / temperature, dim=1)
             for logits in teachers]
    return sum(probs[1:], probs[0]) / len(probs) if len(probs) > 1 else probs[0]


def accuracy(model, inputs, labels):
    with torch.no_grad():
        first = next(model.parameters())
        predicted = model(torch.from_numpy(inputs).to(first.dtype)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def replay(method, initial, steps, train_inputs, train_labels, schedule, total_steps,
           weight_decay=0.01, temperature=2.0, kd_weight=0.5, teachers=(), max_steps=None,
           step_offset=0, dtype=torch.float32):
    """Trains the C run's initial model in PyTorch on the C run's batches.  `schedule` is
    (kind, peak lr, warm-up steps); `teachers` the logit arrays whose softmax(z/T) mean is
    the kd / avg-kd target; step_offset shifts the schedule (only to show that the
    comparison sees an off-by-one); dtype float64 gives the reference trajectory that float32
    rounding drifts from (the noise floor of the comparison).  Returns (model, per-step losses, per-step rates)."""
    model = Mlp(initial).to(dtype)
    optimizer = adamw(model, weight_decay)
    kind, peak, warmup = schedule
    inputs_all = torch.from_numpy(train_inputs).to(dtype)
    labels_all = torch.from_numpy(train_labels.astype(np.int64))
    losses, rates = [], []
    for index, step in enumerate(steps if max_steps is None else steps[:max_steps]):
        rows = np.asarray(step["ids"], dtype=np.int64)
        lr = schedule_lr(kind, peak, index + step_offset, total_steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        targets = target_probs(teachers, rows, temperature, dtype) if teachers else None
        logits = model(inputs_all[rows])
        loss = loss_of(method, logits, labels_all[rows], targets, temperature, kd_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        rates.append(lr)
    return model, losses, rates


def compare(c_steps, torch_losses, torch_rates, compared):
    """(steps compared, max relative loss difference, max relative lr difference)."""
    count = min(compared, len(c_steps), len(torch_losses))
    loss_diff = max(abs(c_steps[i]["loss"] - torch_losses[i]) / max(abs(c_steps[i]["loss"]),
                                                                    1e-30)
                    for i in range(count))
    lr_diff = max(abs(c_steps[i]["lr"] - torch_rates[i]) / c_steps[i]["lr"]
                  for i in range(count))
    return count, loss_diff, lr_diff


def read_state(path, model):
    """The student of a trainer state (--out + ".state", as --stop-after leaves it): {name:
    (params, m, v)} per tensor of `model` (cm_model's block keeps every tensor 16-float
    aligned, in fc0.weight, fc0.bias, fc1.weight ... order) and the step count."""
    tensors, metadata = safetensors.load(path)
    blocks = [np.asarray(tensors[f"student.{key}"], dtype=np.float32)
              for key in ("params", "m", "v")]
    out, offset = {}, 0
    for name, parameter in model.named_parameters():
        count = parameter.numel()
        out[name] = tuple(block[offset:offset + count].reshape(parameter.shape)
                          for block in blocks)
        offset += (count + 15) // 16 * 16
    return out, int(metadata["step"])


def one_step(method, initial, before_path, after_path, step, train_inputs, train_labels,
             schedule, total_steps, weight_decay=0.01, temperature=2.0, kd_weight=0.5,
             teachers=()):
    """Resynchronised check of one C step: PyTorch starts from the C state at `before_path`
    (weights and AdamW moments after k steps; `initial` gives the shapes), takes step k+1 on
    the logged batch `step` and is compared with the C state at `after_path`.  Returns the
    largest relative difference of the weight updates (|Δtorch - ΔC| less 2 ulps of the
    stored weight, over max |ΔC|, per tensor) and of the second moments; rounding gives
    ~1e-6, another AdamW, schedule or loss detail (a 0.1% rate, eps, decayed biases) 1e-3
    or more, whatever float drift came before step k."""
    model = Mlp(initial)
    optimizer = adamw(model, weight_decay)
    before, k = read_state(before_path, model)
    after, k1 = read_state(after_path, model)
    if k1 != k + 1 or step["step"] != k1:
        raise ValueError(f"{before_path} / {after_path} are steps {k} and {k1}, "
                         f"the logged step is {step['step']}")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            params, m, v = before[name]
            parameter.copy_(torch.from_numpy(params.copy()))
            optimizer.state[parameter] = {"step": torch.tensor(float(k)),
                                          "exp_avg": torch.from_numpy(m.copy()),
                                          "exp_avg_sq": torch.from_numpy(v.copy())}
    kind, peak, warmup = schedule
    for group in optimizer.param_groups:
        group["lr"] = schedule_lr(kind, peak, k, total_steps, warmup)
    rows = np.asarray(step["ids"], dtype=np.int64)
    targets = target_probs(teachers, rows, temperature) if teachers else None
    logits = model(torch.from_numpy(train_inputs[rows]))
    labels = torch.from_numpy(train_labels[rows].astype(np.int64))
    loss = loss_of(method, logits, labels, targets, temperature, kd_weight)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    update_diff = moment_diff = 0.0
    for name, parameter in model.named_parameters():
        c_delta = after[name][0].astype(np.float64) - before[name][0]
        t_delta = parameter.detach().numpy().astype(np.float64) - before[name][0]
        scale = max(float(np.abs(c_delta).max()), 1e-30)
        # Storing p' rounds it on both sides (torch in two operations): 2 ulps are storage.
        storage = 2.0 * np.abs(np.spacing(after[name][0])).astype(np.float64)
        excess = np.maximum(np.abs(t_delta - c_delta) - storage, 0.0)
        update_diff = max(update_diff, float(excess.max()) / scale)
        c_v = after[name][2].astype(np.float64)
        t_v = optimizer.state[parameter]["exp_avg_sq"].numpy().astype(np.float64)
        moment_diff = max(moment_diff, float(np.abs(t_v - c_v).max()) /
                          max(float(np.abs(c_v).max()), 1e-30))
    return update_diff, moment_diff


def load_view(view, max_train=0, max_test=0):
    """(train inputs, train labels, test inputs, test labels) of Fashion-MNIST in `view`,
    bit for bit what the C loader gives (committee.data)."""
    dataset = committee_data.load("fashion-mnist", view, max_train=max_train,
                                  max_test=max_test)
    train, test = dataset.splits["train"], dataset.splits["test"]
    return (np.ascontiguousarray(train.inputs), np.asarray(train.labels),
            np.ascontiguousarray(test.inputs), np.asarray(test.labels))


def parity_row(name, method, initial, log_path, view_data, schedule, total_steps, compared,
               c_accuracy, teachers=(), **loss_options):
    """One row of the table: replays the C run of `log_path` in PyTorch."""
    train_inputs, train_labels, test_inputs, test_labels = view_data
    steps = read_steps(log_path)
    model, losses, rates = replay(method, initial, steps, train_inputs, train_labels,
                                  schedule, total_steps, teachers=teachers, **loss_options)
    count, loss_diff, lr_diff = compare(steps, losses, rates, compared)
    torch_accuracy = accuracy(model, test_inputs, test_labels)
    # The float64 reference of the compared steps: which side rounding moved away from it.
    _, reference, _ = replay(method, initial, steps, train_inputs, train_labels, schedule,
                             total_steps, teachers=teachers, max_steps=count,
                             dtype=torch.float64, **loss_options)
    c_drift = max(abs(steps[i]["loss"] - reference[i]) / reference[i] for i in range(count))
    torch_drift = max(abs(losses[i] - reference[i]) / reference[i] for i in range(count))
    beyond = [i + 1 for i in range(count)
              if abs(steps[i]["loss"] - losses[i]) > 1e-4 * abs(steps[i]["loss"])]
    return {"method": name, "initial": initial, "steps_path": log_path, "steps": count, "total_steps": len(steps),
            "max_rel_loss_diff": loss_diff, "max_rel_lr_diff": lr_diff,
            "first_step_beyond_1e-4": beyond[0] if beyond else None,
            "c_vs_float64": c_drift, "torch_vs_float64": torch_drift,
            "c_accuracy": c_accuracy, "torch_accuracy": torch_accuracy,
            "accuracy_diff_points": 100.0 * (torch_accuracy - c_accuracy),
            "c_final_loss": steps[-1]["loss"], "torch_final_loss": losses[-1]}


def table(rows):
    """The Markdown table of `make bench-parity` (README "Parity with PyTorch")."""
    lines = ["| method | steps compared | max rel. loss diff | first step > 1e-4 | "
             "C vs float64 | torch vs float64 | one-step resync (steps) | C acc | torch acc | "
             "diff (points) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        resync = row.get("resync") or {}
        resync_text = (f"{max(resync.values()):.1e} ({', '.join(map(str, resync))})"
                       if resync else "-")
        first = row["first_step_beyond_1e-4"]
        lines.append(f"| {row['method']} | {row['steps']} of {row['total_steps']} | "
                     f"{row['max_rel_loss_diff']:.2e} | {first if first else 'none'} | "
                     f"{row['c_vs_float64']:.1e} | {row['torch_vs_float64']:.1e} | "
                     f"{resync_text} | {100 * row['c_accuracy']:.2f} | "
                     f"{100 * row['torch_accuracy']:.2f} | "
                     f"{row['accuracy_diff_points']:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - the bench driver is run_parity.py
    raise SystemExit("run bench/parity/run_parity.py (make bench-parity)")
