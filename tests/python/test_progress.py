"""Progress inside each epoch of student-trainer: log lines when stderr is not a terminal, a bar
redrawn in place on a terminal (a pseudo-terminal here), and --progress off.  No timing is
asserted: the lines are due every tenth of the epoch with --progress-interval 0."""
import os
import pty
import re
import subprocess

import processes

SUBSET = ["--max-train", "2000", "--max-test", "500"]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z student-trainer "


def argv(workdir, name, *extra):
    return [os.path.join(processes.BIN, "student-trainer"), "train", "--view", "pool7",
            "--model", "mlp:49-32-10", "--batch", "50", "--epochs", "2", "--http", "off",
            *SUBSET, "--out", os.path.join(workdir, f"{name}.safetensors"), *extra]


def test_lines_when_not_a_terminal(workdir):
    done = subprocess.run(argv(workdir, "progress-lines", "--progress-interval", "0"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\033" not in done.stderr
    lines = re.findall(r"info: epoch (\d)/2: +(\d+)% \((\d+)/2000 examples\)  (\d+) examples/s"
                       r"  ETA (\d+:\d\d)  loss (\d+\.\d{4})$", done.stderr, re.MULTILINE)
    for epoch in ("1", "2"):  # 40 batches of 50: a line at each tenth
        done_counts = [int(line[2]) for line in lines if line[0] == epoch]
        assert done_counts == list(range(200, 2001, 200)), done.stderr
    assert [int(line[1]) for line in lines[:3]] == [10, 20, 30]


def test_lines_with_teachers_show_the_wait_share(workdir):
    path = processes.fit_mlp(workdir, "mlp:49-64-10", "pool7", "progress-comp", *SUBSET[2:])
    teacher = processes.c_teacher(path, workdir, *SUBSET, "--name", "comp", "--http", "off")
    try:
        done = subprocess.run(argv(workdir, "progress-kd", "--progress", "lines",
                                   "--progress-interval", "0", "--method", "kd",
                                   "--teacher", f"comp={teacher.endpoint}"),
                              capture_output=True, text=True, timeout=600)
    finally:
        assert teacher.stop() == 0
    assert done.returncode == 0, done.stderr
    shares = re.findall(r"info: epoch [12]/2: .* ETA \d+:\d\d  teacher wait (\d+)%  loss \d",
                        done.stderr)
    assert len(shares) == 20 and all(0 <= int(share) <= 100 for share in shares), done.stderr


def run_on_a_terminal(command):
    """Runs command with stdin, stdout and stderr on a pseudo-terminal; returns (exit, bytes)."""
    leader, follower = pty.openpty()
    child = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every end of the terminal closed
            break
        if not data:
            break
        output += data
    os.close(leader)
    return child.wait(600), output.decode()


def test_bar_on_a_terminal(workdir):
    code, output = run_on_a_terminal(argv(workdir, "progress-bar"))
    assert code == 0, output
    bars = re.findall(r"\repoch ([12])/2 \[([#.]{24})\] +(\d+)%  \d+ examples/s  ETA \d+:\d\d  "
                      r"loss \d+\.\d{4}\033\[K", output)
    assert {bar[0] for bar in bars} == {"1", "2"}, repr(output)
    assert ("2", "#" * 24, "100") in bars  # the last redraw of an epoch is full
    # Each bar is erased before the next log line, which then starts clean: once the bars are
    # taken out, every line is a log line or the summary on stdout.
    text = re.sub(r"\r[^\r\n]*\033\[K", "", output).replace("\r\033[K", "")
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    assert lines[-1].startswith("test_accuracy="), repr(output)
    for line in lines[:-1]:
        assert re.match(STAMP, line), repr(line)
    epoch_lines = [line for line in lines if re.search(r"info: epoch \d/2  loss", line)]
    assert len(epoch_lines) == 2


def test_off_and_bad_values(workdir):
    code, output = run_on_a_terminal(argv(workdir, "progress-off", "--progress", "off"))
    assert code == 0 and "\r" not in output.replace("\r\n", "\n"), repr(output)
    done = subprocess.run(argv(workdir, "progress-bad", "--progress", "sometimes"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--progress must be auto, bar, lines or off, not 'sometimes'" in done.stderr
    done = subprocess.run(argv(workdir, "progress-bad", "--progress-interval", "-1"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--progress-interval must not be negative" in done.stderr
