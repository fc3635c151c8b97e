#!/usr/bin/python3
"""The same CNN as bench/bench_cnn.c in PyTorch, one thread: training examples/s.

    /usr/bin/python3 bench/bench_cnn_torch.py [SPEC [BATCH]]

SPEC is a committee cnn spec (default cnn:conv=32-64,pool=1-1,head=flatten,fc=256);
the network is built the way cm_model builds it: per stage Conv2d(k, padding k//2,
bias=False) -> BatchNorm2d -> ReLU (-> MaxPool2d(2)), then global average pooling or
flatten, Linear+ReLU per fc width, Linear to the classes.  One step is forward,
cross-entropy, backward and AdamW on synthetic inputs, like bench_cnn.  Rates are
measured on the process's CPU clock and on the wall clock (with the load average),
as bench_cnn does.  Needs Debian's python3-torch.
"""
import os
import sys
import time

import torch


def parse_spec(text):
    if text != "cnn" and not text.startswith("cnn:"):
        raise SystemExit(f"bench_cnn_torch: '{text}' is not a cnn spec")
    spec = {"image": "28x28", "channels": "1", "conv": "32-64-128", "kernel": "3",
            "pool": None, "head": "gap", "fc": "256", "classes": "10"}
    for field in filter(None, text[4:].split(",")):
        key, _, value = field.partition("=")
        if key not in spec:
            raise SystemExit(f"bench_cnn_torch: unknown key '{key}' in '{text}'")
        spec[key] = value
    conv = [int(width) for width in spec["conv"].split("-")]
    pool = [int(flag) for flag in spec["pool"].split("-")] if spec["pool"] else [1] * len(conv)
    fc = [] if spec["fc"] == "0" else [int(width) for width in spec["fc"].split("-")]
    height, width = (int(side) for side in spec["image"].split("x"))
    return (height, width, int(spec["channels"]), conv, int(spec["kernel"]), pool,
            spec["head"], fc, int(spec["classes"]))


def build(height, width, channels, conv, kernel, pool, head, fc, classes):
    layers = []
    for out_channels, pooled in zip(conv, pool):
        layers += [torch.nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2,
                                   bias=False),
                   torch.nn.BatchNorm2d(out_channels), torch.nn.ReLU()]
        if pooled:
            layers.append(torch.nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    if head == "flatten":
        layers.append(torch.nn.Flatten())
        features = channels * height * width
    else:
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        features = channels
    for hidden in fc:
        layers += [torch.nn.Linear(features, hidden), torch.nn.ReLU()]
        features = hidden
    layers.append(torch.nn.Linear(features, classes))
    return torch.nn.Sequential(*layers)


def main():
    spec_text = sys.argv[1] if len(sys.argv) > 1 else "cnn:conv=32-64,pool=1-1,head=flatten,fc=256"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(1)
    height, width, channels, *rest = parse_spec(spec_text)
    model = build(height, width, channels, *rest)
    classes = rest[-1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    inputs = torch.rand(batch, channels, height, width) - 0.5
    labels = torch.randint(0, classes, (batch,))
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps = 20
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    cpu_seconds = (time.process_time() - cpu_started) / steps
    wall_seconds = (time.perf_counter() - wall_started) / steps
    print(f"| PyTorch {torch.__version__} ({spec_text}, batch {batch}, 1 thread) | value |")
    print("|---|---|")
    print(f"| training step, CPU clock | {batch / cpu_seconds:.0f} examples/s |")
    print(f"| the same by the wall clock (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores) | {batch / wall_seconds:.0f} examples/s |")


if __name__ == "__main__":
    main()
