#!/usr/bin/python3
"""committee next to PyTorch eager, one thread each, in one run: `make bench-torch`.

    /usr/bin/python3 bench/bench_torch.py [--bin build/bin] [--reps N] [--batch B] [--json F]

Starts build/bin/bench_torch --serve (the committee side: the models, inputs and steps are
described in bench/bench_torch.c) and builds the same models here in PyTorch (Debian's
python3-torch, torch.set_num_threads(1)).  Each repetition runs, for every case, a block of
steps in committee and the same number of steps in PyTorch, back to back (the order swapped
every repetition), so both see the same machine; the table gives the min and the median per
step over the repetitions (the process's CPU clock), the ratio PyTorch / committee of both,
and the load average before and after.  Then, in extra repetitions with committee's timer
around the BLAS seam (cm_blas_timer, the monotonic clock), the share of committee's time
spent outside sgemm (of the run with the shortest wall time), and the same share by `perf
record` (samples outside libopenblas, start-up left out) when perf is installed and allowed.

The PyTorch models follow cm_model: the CNN is bench/bench_cnn_torch.py's; the ViT is patch
embedding (a Linear over the flattened non-overlapping patches), a cls token and learned
positions, pre-norm blocks x + proj(attention(ln1(x))), x + fc2(gelu_tanh(fc1(ln2(x)))), a
final layer norm, the mean over the tokens, a Linear head; MLPs are Linear+ReLU stacks.  The
student step is the distillation loss T^2 KL(target || softmax(logits / T)), T = 4, against
fixed soft targets; teacher steps use cross-entropy; every training step ends with AdamW.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cnn_torch  # noqa: E402  (the CNN as bench_cnn_torch builds it)

TEMPERATURE = 4.0


def parse_fields(text, family):
    fields = {}
    for field in filter(None, text[len(family) + 1:].split(",")):
        key, _, value = field.partition("=")
        fields[key] = value
    return fields


class Block(torch.nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, mlp)
        self.fc2 = torch.nn.Linear(mlp, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        scores = (query @ key.transpose(-2, -1)) * (dim // self.heads) ** -0.5
        attended = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(attended)
        hidden = torch.nn.functional.gelu(self.fc1(self.ln2(x)), approximate="tanh")
        return x + self.fc2(hidden)


class ViT(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()
        fields = parse_fields(spec, "vit")
        self.height, self.width = (int(side) for side in fields.get("image", "28x28").split("x"))
        self.patch = int(fields["patch"])
        dim = int(fields["dim"])
        tokens = 1 + (self.height // self.patch) * (self.width // self.patch)
        self.embed = torch.nn.Linear(self.patch * self.patch, dim)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = torch.nn.Sequential(
            *[Block(dim, int(fields["heads"]), int(fields["mlp"]))
              for _ in range(int(fields["depth"]))])
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, int(fields.get("classes", "10")))

    def forward(self, images):
        batch, patch = images.shape[0], self.patch
        patches = (images.reshape(batch, self.height // patch, patch, self.width // patch, patch)
                   .permute(0, 1, 3, 2, 4).reshape(batch, -1, patch * patch))
        x = torch.cat([self.cls.expand(batch, -1, -1), self.embed(patches)], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def build(spec):
    if spec.startswith("vit:"):
        return ViT(spec)
    if spec.startswith("cnn:"):
        return bench_cnn_torch.build(*bench_cnn_torch.parse_spec(spec))
    widths = [int(width) for width in spec[4:].split("-")]
    layers = []
    for index in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[index], widths[index + 1]))
        if index + 2 < len(widths):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def input_shape(spec, batch):
    if spec.startswith("cnn:"):
        height, width, channels, *_ = bench_cnn_torch.parse_spec(spec)
        return (batch, channels, height, width)
    if spec.startswith("vit:"):
        return (batch, 28 * 28)  # flattened images, as committee takes them
    return (batch, int(spec[4:].split("-")[0]))


class TorchCase:
    def __init__(self, spec, mode, batch):
        torch.manual_seed(1)
        self.model, self.mode = build(spec), mode
        self.inputs = torch.rand(*input_shape(spec, batch)) - 0.5
        classes = 10
        self.labels = torch.randint(0, classes, (batch,))
        self.targets = torch.softmax(torch.randn(batch, classes), dim=1)
        if mode == "infer":
            self.model.eval()
        else:
            self.model.train()
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3,
                                               weight_decay=0.01)

    def step(self):
        if self.mode == "infer":
            with torch.inference_mode():
                self.model(self.inputs)
            return
        self.optimizer.zero_grad(set_to_none=False)
        logits = self.model(self.inputs)
        if self.mode == "labels":
            loss = torch.nn.functional.cross_entropy(logits, self.labels)
        else:
            log_probs = torch.log_softmax(logits / TEMPERATURE, dim=1)
            loss = torch.nn.functional.kl_div(log_probs, self.targets,
                                              reduction="batchmean") * TEMPERATURE ** 2
        loss.backward()
        self.optimizer.step()

    def run(self, steps):
        started = time.process_time()
        for _ in range(steps):
            self.step()
        return time.process_time() - started


class CommitteeSide:
    def __init__(self, binary, batch):
        self.process = subprocess.Popen([binary, "--serve", "--batch", str(batch)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise SystemExit(f"bench_torch: {self.process.args[0]} stopped at '{line}'")
        return answer.split()

    def cases(self):
        self.process.stdin.write("list\n")
        self.process.stdin.flush()
        found = []
        for line in self.process.stdout:
            if line.strip() == "end":
                return found
            found.append(line.split())
        raise SystemExit("bench_torch: no case list")

    def run(self, name, steps, timer=False):
        """CPU seconds of the steps, and with the timer the wall seconds of the steps and of
        the sgemm calls in them."""
        cpu, wall, sgemm = (float(value) for value in self.ask(
            f"{name} {steps}{' timer' if timer else ''}"))
        return (cpu, wall, sgemm) if timer else (cpu, sgemm)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def perf_share(binary, batch, name, step_seconds):
    """Share of committee's CPU samples outside OpenBLAS for one case, by `perf record` (no
    timer in the code), or None when perf is missing or not allowed here.  The first ~2 s
    (start-up: every model is built, then a second of warm-up steps) are not recorded."""
    if not shutil.which("perf"):
        return None
    warmup, steps = max(3, int(1.5 / step_seconds)), max(10, int(3.0 / step_seconds))
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, "perf.data")
        recorded = subprocess.run(
            ["perf", "record", "-q", "-D", "2000", "-F", "999", "-o", data, binary, "--serve",
             "--batch", str(batch)], input=f"{name} {warmup}\n{name} {steps}\n",
            capture_output=True, text=True)
        if recorded.returncode != 0:
            return None
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso",
                                 "--stdio"], capture_output=True, text=True)
    total = blas = 0.0
    for line in report.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].endswith("%") and not line.startswith("#"):
            share = float(fields[0].rstrip("%"))
            total += share
            if "openblas" in fields[1] or "libblas" in fields[1]:
                blas += share
    return 1.0 - blas / total if total > 0 else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default="build/bin")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=0.4,
                        help="about how long one block of steps runs (sets the steps per case)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    committee = CommitteeSide(os.path.join(args.bin, "bench_torch"), args.batch)
    cases = committee.cases()
    load_before = os.getloadavg()
    torch_cases, steps = {}, {}
    for name, spec, mode in cases:  # warm up both sides; size the blocks by committee's speed
        torch_cases[name] = TorchCase(spec, mode, args.batch)
        torch_cases[name].run(3)
        cpu, _ = committee.run(name, 3)
        steps[name] = max(2, int(args.seconds / (cpu / 3)))
    times = {name: {"committee": [], "torch": []} for name, _, _ in cases}
    for rep in range(args.reps):
        for name, _, _ in cases:
            order = ["committee", "torch"] if rep % 2 == 0 else ["torch", "committee"]
            for side in order:
                if side == "committee":
                    seconds, _ = committee.run(name, steps[name])
                else:
                    seconds = torch_cases[name].run(steps[name])
                times[name][side].append(seconds / steps[name])
    shares = {}
    for name, _, _ in cases:  # the timer's runs apart: its clock reads cost a little
        best = None  # sgemm's share of the wall clock: preemption hits both alike
        for _ in range(3):
            _cpu, wall, sgemm = committee.run(name, steps[name], timer=True)
            if best is None or wall < best[0]:
                best = (wall, sgemm)
        shares[name] = 1.0 - best[1] / best[0]
    committee.close()
    binary = os.path.join(args.bin, "bench_torch")
    perf_shares = {name: perf_share(binary, args.batch, name, min(times[name]["committee"]))
                   for name, _, _ in cases}
    load_after = os.getloadavg()

    print(f"PyTorch {torch.__version__} eager vs committee, batch {args.batch}, one thread each "
          f"(OpenBLAS 1 thread), {args.reps} interleaved repetitions, CPU clock per step; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
          f"{os.cpu_count()} cores")
    print("(ceiling: PyTorch's min over committee's sgemm time alone, min x (1 - timer share):"
          " the ratio if all of committee's time outside sgemm were zero)")
    print()
    print("| case | model | committee ms (min / median) | PyTorch ms (min / median) "
          "| PyTorch / committee (min / median) | committee outside sgemm (timer / perf) "
          "| ceiling |")
    print("|---|---|---|---|---|---|---|")
    report = {"torch": torch.__version__, "batch": args.batch, "reps": args.reps,
              "load_before": load_before[0], "load_after": load_after[0], "cases": {}}
    for name, spec, mode in cases:
        ours, theirs = times[name]["committee"], times[name]["torch"]
        row = {"spec": spec, "mode": mode, "steps_per_rep": steps[name],
               "committee_min": min(ours), "committee_median": statistics.median(ours),
               "torch_min": min(theirs), "torch_median": statistics.median(theirs),
               "non_gemm_share": shares[name], "non_gemm_share_perf": perf_shares[name]}
        row["ratio_min"] = row["torch_min"] / row["committee_min"]
        row["ratio_median"] = row["torch_median"] / row["committee_median"]
        row["ratio_ceiling"] = row["torch_min"] / (row["committee_min"] * (1.0 - shares[name]))
        report["cases"][name] = row
        by_perf = "n/a" if perf_shares[name] is None else f"{100 * perf_shares[name]:.0f}%"
        print(f"| {name} | `{spec}` ({mode}) | {1e3 * row['committee_min']:.2f} / "
              f"{1e3 * row['committee_median']:.2f} | {1e3 * row['torch_min']:.2f} / "
              f"{1e3 * row['torch_median']:.2f} | **{row['ratio_min']:.2f}x** / "
              f"{row['ratio_median']:.2f}x | {100 * shares[name]:.0f}% / {by_perf} | "
              f"{row['ratio_ceiling']:.2f}x |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
