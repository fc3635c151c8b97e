"""python3 -m committee report RUN.jsonl... --out DIR: a picture of one or more training runs.

Reads the JSON-lines metrics files of student-trainer (--metrics FILE: one object per finished
epoch) and writes DIR/index.html with PNG plots beside it (matplotlib, Agg backend), every run
overlaid and named by its file name:

    loss.png      the training loss per epoch (solid) and the test loss (dashed)
    terms.png     the loss terms of the method (ce or mse, kd, fitnet, dd_*)
    quality.png   test (and held-out) accuracy, or RMSE for regression
    wait.png      seconds each epoch waited for teachers
    bytes.png     MB received from each teacher per epoch
    router.png    DiverseDistill: each teacher's mean router weight per epoch
    skipped.png   DiverseDistill with --dd-filter: the share of (example, teacher) pairs skipped

A plot whose data no run has is left out.  Lines that are not epoch records (a configuration
line, say) are skipped, keys the report does not know are ignored, and a last line cut short
by a run still writing is skipped with a warning.  The page checks in the browser that every
plot loaded and says so at its end ("plots loaded: N of N").
"""
import html
import json
import os
import sys
import tempfile

TERMS = ("ce", "mse", "kd", "fitnet", "dd_answer", "dd_router", "dd_align", "dd_probe_match",
         "dd_probe_answer")


class ReportError(Exception):
    """A metrics file the report cannot use: the message names it."""


def load_run(path):
    """The epoch records of one metrics file, in epoch order, the last one kept for an epoch
    that appears twice (a run resumed with --resume appends), and the first non-epoch object
    (the run's configuration, if the trainer wrote one) or None."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().split("\n")
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    epochs, config = {}, None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # a run still writing its last line
                print(f"committee report: {path}: skipping the unfinished line {number}",
                      file=sys.stderr)
                continue
            raise ReportError(f"{path} line {number} is not JSON") from None
        if not isinstance(record, dict):
            continue
        epoch = record.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and "loss" in record:
            epochs[epoch] = record
        elif config is None:
            config = record
    if not epochs:
        raise ReportError(f"{path} holds no epoch records (student-trainer --metrics FILE "
                          "writes one per finished epoch)")
    return [epochs[epoch] for epoch in sorted(epochs)], config


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _series(records, key):
    """(epochs, values) of a top-level number, leaving out epochs without it."""
    points = [(record["epoch"], _number(record.get(key))) for record in records]
    points = [(epoch, value) for epoch, value in points if value is not None]
    return [epoch for epoch, _ in points], [value for _, value in points]


def _teachers(records):
    names = []
    for record in records:
        for name in (record.get("teachers") or {}):
            if name not in names:
                names.append(name)
    return names


def _teacher_series(records, teacher, value_of):
    epochs, values = [], []
    for record in records:
        stats = (record.get("teachers") or {}).get(teacher)
        value = value_of(stats) if isinstance(stats, dict) else None
        if value is not None:
            epochs.append(record["epoch"])
            values.append(value)
    return epochs, values


def _received_mb(records, teacher):
    """MB received per epoch: the trainer counts bytes since its start (a resumed run's
    process starts again at 0, so a drop means a new process)."""
    epochs, totals = _teacher_series(records, teacher, lambda stats: _number(stats.get("bytes")))
    values, before = [], 0
    for total in totals:
        values.append((total - before if total >= before else total) / 1e6)
        before = total
    return epochs, values


def _skipped_share(stats):
    needed, skipped = _number(stats.get("filter_needed")), _number(stats.get("filter_skipped"))
    return skipped / needed if needed and skipped is not None else None


def _plots(runs):
    """[(file name, title, y label, [(label, epochs, values, style)])] of the plots with data."""
    plots = []
    loss, terms, quality, wait, received, router, skipped = [], [], [], [], [], [], []
    for name, records, _ in runs:
        loss.append((f"{name} train", *_series(records, "loss"), "-"))
        loss.append((f"{name} test", *_series(records, "test_loss"), "--"))
        for term in TERMS:
            epochs, values = _series(records, term)
            if any(values):  # a term switched off (0 every epoch) is left out
                terms.append((f"{name} {term}", epochs, values, "-"))
        regression = any("test_rmse" in record for record in records)
        for split, style in (("test", "-"), ("valid", "--")):
            key = f"{split}_rmse" if regression else f"{split}_accuracy"
            epochs, values = _series(records, key)
            if split == "valid" and not any(values):  # 0 without --holdout: not a score
                continue
            quality.append((f"{name} {split}", epochs, values, style))
        wait.append((name, *_series(records, "wait_seconds"), "-"))
        for teacher in _teachers(records):
            received.append((f"{name} {teacher}", *_received_mb(records, teacher), "-"))
            router.append((f"{name} {teacher}", *_teacher_series(
                records, teacher, lambda stats: _number(stats.get("router_weight"))), "-"))
            skipped.append((f"{name} {teacher}", *_teacher_series(records, teacher,
                                                                  _skipped_share), "-"))
    regression = any("test_rmse" in record for _, records, _ in runs for record in records)
    candidates = [
        ("loss.png", "Loss per epoch", "loss", loss),
        ("terms.png", "Loss terms per epoch", "weighted term", terms),
        ("quality.png", "Test RMSE" if regression else "Test accuracy",
         "RMSE" if regression else "accuracy", quality),
        ("wait.png", "Time waiting for teachers", "seconds per epoch", wait),
        ("bytes.png", "Bytes received from teachers", "MB per epoch", received),
        ("router.png", "DiverseDistill router weight per teacher", "mean weight", router),
        ("skipped.png", "Pairs skipped by the DiverseDistill filter", "share of the pairs",
         skipped),
    ]
    for file_name, title, label, lines in candidates:
        lines = [line for line in lines if line[1]]
        if file_name == "wait.png" and not any(any(line[2]) for line in lines):
            lines = []  # no teachers: nothing waited
        if lines:
            plots.append((file_name, title, label, lines))
    return plots


def _draw(path, title, label, lines):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7.0, 4.0), dpi=100)
    for name, epochs, values, style in lines:
        axes.plot(epochs, values, style, marker="o", markersize=3, label=name)
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(label)
    axes.grid(True, alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)


def _method(config, records):
    """The run's --method from its configuration line (at the top or one level down), else
    the loss terms its epochs carry."""
    if isinstance(config, dict):
        for place in [config] + [value for value in config.values() if isinstance(value, dict)]:
            if isinstance(place.get("method"), str):
                return place["method"]
    terms = [term for term in TERMS if term in records[-1]]
    return "terms " + "+".join(terms) if terms else ""


def _summary_rows(runs):
    rows = []
    for name, records, config in runs:
        last = records[-1]
        if "test_rmse" in last:
            score = f"test RMSE {last['test_rmse']:.4f}"
        elif "test_accuracy" in last:
            score = f"test accuracy {last['test_accuracy']:.4f}"
        else:
            score = ""
        method = _method(config, records)
        seconds = sum(_number(record.get("seconds")) or 0 for record in records)
        rows.append((name, str(method), str(len(records)), score, f"{seconds:.1f}"))
    return rows


_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img.plot"), loaded = 0;
  for (var i = 0; i < images.length; i++)
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  var note = document.getElementById("plot-check");
  note.textContent = "plots loaded: " + loaded + " of " + images.length;
  if (loaded != images.length) note.className = "missing";
});
</script>"""


def _page(title, runs, plots):
    head = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n"
            "body { font-family: sans-serif; margin: 2em; max-width: 60em; }\n"
            "table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; "
            "border-bottom: 1px solid #ccc; text-align: left; }\n"
            "img.plot { display: block; max-width: 100%; margin: 1em 0; }\n"
            ".missing { color: #b00; font-weight: bold; }\n</style>\n</head>\n<body>\n")
    parts = [head, f"<h1>{html.escape(title)}</h1>\n<table>\n<tr><th>run</th><th>method</th>"
             "<th>epochs</th><th>last epoch</th><th>training seconds</th></tr>\n"]
    for row in _summary_rows(runs):
        parts.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) +
                     "</tr>\n")
    parts.append("</table>\n")
    for file_name, plot_title, _, _ in plots:
        parts.append(f"<h2>{html.escape(plot_title)}</h2>\n<img class=\"plot\" "
                     f"src=\"{file_name}\" alt=\"{html.escape(plot_title)}\">\n")
    parts.append(f"<p id=\"plot-check\">plots loaded: not checked (JavaScript is off)</p>\n"
                 f"{_CHECK_SCRIPT}\n</body>\n</html>\n")
    return "".join(parts)


def _readable(path):
    """mkstemp makes files 0600; a report is for reading (served, shared): 0666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _write_atomically(path, data):
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(prefix=".report-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _readable(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_report(paths, out, title=None):
    """Writes out/index.html and its plots for the metrics files `paths`; returns the page's
    path.  ReportError names a file the report cannot use."""
    runs = []
    names = [os.path.basename(path) for path in paths]
    for path, name in zip(paths, names):
        if names.count(name) > 1:  # the same file name in two directories: say which
            name = path
        records, config = load_run(path)
        runs.append((name, records, config))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise ReportError(f"cannot create --out {out}: {error.strerror}") from None
    plots = _plots(runs)
    for file_name, plot_title, label, lines in plots:
        handle, temporary = tempfile.mkstemp(prefix=".plot-", suffix=".png", dir=out)
        os.close(handle)
        try:
            _draw(temporary, plot_title, label, lines)
            _readable(temporary)
            os.replace(temporary, os.path.join(out, file_name))
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
    page = os.path.join(out, "index.html")
    title = title or "committee run report: " + ", ".join(name for name, _, _ in runs)
    _write_atomically(page, _page(title, runs, plots).encode("utf-8"))
    return page


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN.jsonl",
                        help="metrics files of student-trainer --metrics")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for index.html and the PNG plots (created)")
    parser.add_argument("--title", help="page title [default: the file names]")


def main(args):
    try:
        page = write_report(args.runs, args.out, args.title)
    except ReportError as error:
        print(f"python3 -m committee report: {error}", file=sys.stderr)
        return 1
    print(page)
    return 0
