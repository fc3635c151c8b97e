"""Teachers as real processes for the Python tests: teacher-server serve (C) and
python3 -m committee serve, started on ephemeral ports and stopped with SIGTERM.

Both print one line "serving 'NAME' (...) on ENDPOINT, view ..., HTTP HOST:PORT" when
they are ready; start() waits for it (generously: the machine is shared) and returns a
Process with .endpoint, .http, .pid and .stop() (returns the exit code).
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("COMMITTEE_BIN_DIR", os.path.join(ROOT, "build", "bin"))
PYTHON = sys.executable
READY = re.compile(r"serving '.*' \(.*\) on (\S+), view .* HTTP (\S+)")


def python_env():
    env = dict(os.environ)
    paths = [os.path.join(ROOT, "python"), os.path.join(ROOT, "build", "python")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class Process:
    def __init__(self, argv, log_path, timeout=180):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "w+")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      env=python_env(), cwd=ROOT)
        self.pid = self.popen.pid
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            match = READY.search(text)
            if match:
                self.endpoint = match.group(1)
                self.http = None if match.group(2) == "off" else match.group(2)
                return
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.popen.kill()
                raise RuntimeError(f"{' '.join(argv)} did not start:\n{text}")
            time.sleep(0.1)

    def text(self):
        with open(self.log_path) as file:
            return file.read()

    def stop(self, timeout=120):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def rss_bytes(self):
        with open(f"/proc/{self.pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def c_teacher(model, workdir, *extra):
    return Process([os.path.join(BIN, "teacher-server"), "serve", "--model", model,
                    "--bind", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0", *extra],
                   os.path.join(workdir, f"c-teacher-{time.monotonic_ns()}.log"))


def python_teacher(workdir, *args):
    return Process([PYTHON, "-m", "committee", "serve", "--bind", "tcp://127.0.0.1:0",
                    "--http", "127.0.0.1:0", *args],
                   os.path.join(workdir, f"py-teacher-{time.monotonic_ns()}.log"))


def fit_mlp(workdir, spec="mlp:784-64-10", view="full", name="mlp", *extra):
    """A tiny fitted MLP checkpoint (fit once per directory)."""
    out = os.path.join(workdir, f"{name}.safetensors")
    if not os.path.exists(out):
        subprocess.run([os.path.join(BIN, "teacher-server"), "fit", "--model", spec, "--view",
                        view, "--max-train", "2000", "--epochs", "1", "--out", out, *extra],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def http_get(address, path):
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text, name):
    """The value of a sample `name` (with labels, e.g. 'x_total{code="BUSY"}') or 0."""
    for line in text.splitlines():
        if line.startswith(name + " ") :
            return float(line.split()[-1])
    return 0.0
