#!/usr/bin/python3
"""Served examples/s: the Python teacher vs teacher-server serve on the same MLP, and the
Python teacher's overhead over a bare PyTorch forward pass (make bench-python).

One MLP checkpoint (teacher-server fit, weights irrelevant) is served three ways on
loopback: teacher-server serve; python3 -m committee serve --mlp (NumPy/OpenBLAS, the
exact C forward); a committee.Teacher whose forward is the same MLP in PyTorch.  A client
keeps 4 requests of 256 examples in flight (like bench_serve) and counts examples/s.
The bare PyTorch forward runs the same 256-row batches in process.  One thread each.
"""
import os
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path[:0] = [os.path.join(ROOT, "python"), os.path.join(ROOT, "tests", "python")]
import committee  # noqa: E402
import processes  # noqa: E402
from committee.safetensors import load  # noqa: E402

SPEC, BATCH, IN_FLIGHT, REQUESTS = "mlp:784-1024-1024-10", 256, 4, 120


def served_rate(endpoint):
    with committee.Client(endpoint, timeout_ms=120000) as client:
        client.hello()
        rng = np.random.default_rng(1)
        batches = [rng.integers(0, 60000, BATCH) for _ in range(REQUESTS)]
        for ids in batches[:4]:  # warm up
            client.query(ids, ["logits", "hidden"])
        started = time.perf_counter()
        pending = []
        for ids in batches:
            pending.append(client.request(ids, ["logits", "hidden"]))
            if len(pending) >= IN_FLIGHT:
                client.result(pending.pop(0))
        for request_id in pending:
            client.result(request_id)
        return REQUESTS * BATCH / (time.perf_counter() - started)


def torch_model(path):
    import torch
    tensors, _ = load(path)
    layers = []
    index = 0
    while f"fc{index}.weight" in tensors:
        linear = torch.nn.Linear(*tensors[f"fc{index}.weight"].shape[::-1])
        linear.weight.data = torch.from_numpy(tensors[f"fc{index}.weight"])
        linear.bias.data = torch.from_numpy(tensors[f"fc{index}.bias"])
        layers.append(linear)
        index += 1
    return layers


def torch_forward(layers):
    import torch

    def forward(rows):
        with torch.no_grad():
            x = torch.from_numpy(rows)
            for layer in layers[:-1]:
                x = torch.relu(layer(x))
            return {"logits": layers[-1](x).numpy(), "hidden": x.numpy()}
    return forward


def main():
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-python-") as workdir:
        path = processes.fit_mlp(workdir, SPEC, "full", "bench")
        rates = {}
        c_teacher = processes.c_teacher(path, workdir, "--http", "off")
        try:
            rates["teacher-server serve (C)"] = served_rate(c_teacher.endpoint)
        finally:
            c_teacher.stop()
        py_teacher = processes.python_teacher(workdir, "--mlp", path, "--http", "off")
        try:
            rates["python3 -m committee serve --mlp (NumPy+OpenBLAS)"] = \
                served_rate(py_teacher.endpoint)
        finally:
            py_teacher.stop()
        layers = torch_model(path)
        forward = torch_forward(layers)
        data = committee.load_fashion_mnist("full")
        rows = [data.splits["train"].inputs[np.random.default_rng(2).integers(0, 60000, BATCH)]
                for _ in range(40)]
        forward(rows[0])
        started = time.perf_counter()
        for batch in rows:
            forward(batch)
        bare = len(rows) * BATCH / (time.perf_counter() - started)
        teacher = committee.Teacher(name="bench-torch", role="foundation", forward=forward,
                                    outputs={"logits": (10,), "hidden": (1024,)}, dataset=data)
        thread = threading.Thread(target=teacher.serve,
                                  kwargs={"bind": "tcp://127.0.0.1:0", "http": "off"})
        thread.start()
        while not teacher.ready:
            time.sleep(0.05)
        try:
            rates["committee.Teacher, PyTorch forward"] = served_rate(teacher.endpoint)
        finally:
            teacher.stop()
            thread.join()
    c_rate = rates["teacher-server serve (C)"]
    print(f"MLP {SPEC}, batch {BATCH}, {IN_FLIGHT} requests in flight, logits+hidden, "
          "tcp loopback, 1 thread")
    print(f"{'server':<52} {'examples/s':>11} {'vs C':>6}")
    for name, rate in rates.items():
        print(f"{name:<52} {rate:>11.0f} {rate / c_rate:>6.2f}")
    served_torch = rates["committee.Teacher, PyTorch forward"]
    print(f"{'bare PyTorch forward, in process':<52} {bare:>11.0f}")
    print(f"Python teacher served / bare PyTorch forward: {served_torch / bare:.2f} "
          f"(overhead {100 * (1 - served_torch / bare):.0f}%)")


if __name__ == "__main__":
    main()
