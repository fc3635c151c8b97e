"""`make install DESTDIR=...` into a temporary directory: the expected files land under
PREFIX, the installed binaries and Python package run from there, the man pages are
roff made from --help, and `make uninstall` takes every file away again."""
import os
import subprocess
import sys

import processes

PREFIX = "/opt/committee-test"
EXPECTED = [
    "bin/teacher-server",
    "bin/student-trainer",
    "share/man/man1/teacher-server.1",
    "share/man/man1/student-trainer.1",
    "share/committee/python/committee/__init__.py",
    "share/committee/python/committee/teacher.py",
    "share/committee/python/committee_pb2.py",
    "share/committee/examples/fit.yaml",
    "share/committee/examples/serve.yaml",
    "share/committee/examples/train.yaml",
    "share/doc/committee/README.md",
    "share/doc/committee/DIVERSEDISTILL.md",
]


def make(target, destdir):
    build = os.path.dirname(os.path.abspath(processes.BIN))
    done = subprocess.run(["make", "--no-print-directory", "-C", processes.ROOT, target,
                           f"BUILD={build}", f"DESTDIR={destdir}", f"PREFIX={PREFIX}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def installed_files(destdir):
    found = []
    for directory, _, files in os.walk(destdir):
        found += [os.path.relpath(os.path.join(directory, name), destdir + PREFIX)
                  for name in files]
    return sorted(found)


def test_install_and_uninstall(tmp_path):
    destdir = str(tmp_path / "stage")
    make("install", destdir)
    files = installed_files(destdir)
    for path in EXPECTED:
        assert path in files, f"{path} not installed; got {files}"
    root = destdir + PREFIX
    for program in ("teacher-server", "student-trainer"):
        binary = os.path.join(root, "bin", program)
        assert os.access(binary, os.X_OK)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and version.stdout.startswith(program + " ")
        page = open(os.path.join(root, "share/man/man1", program + ".1")).read()
        assert page.startswith(".TH ") and version.stdout.strip() in page
        assert "\n.SH NAME\n" in page and "--config FILE" in page
    imported = subprocess.run(
        [sys.executable, "-c", "import committee, committee_pb2; print(committee.__file__)"],
        env={**os.environ, "PYTHONPATH": os.path.join(root, "share/committee/python")},
        capture_output=True, text=True, cwd=str(tmp_path))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(os.path.join(root, "share/committee/python"))
    make("uninstall", destdir)
    assert installed_files(destdir) == []
