#!/usr/bin/python3
"""report.py: the MovieLens table from quality.sh's runs.jsonl (final-* runs only).

    report.py --runs DIR/runs.jsonl --out PREFIX --teacher fm=RMSE,TAIL --teacher comp=RMSE,TAIL
              [--fit-seconds S]

Writes PREFIX.md and PREFIX.json: per method, mean +- std (over seeds, sample std) of
the test RMSE overall and on the long tail, the gap recovered (ce - method) / (ce -
teacher) against the foundation teacher fm and against the best teacher (lowest
test RMSE), the same on the long tail against fm (n/a where ce is not worse than the
teacher: no gap to recover), the share of teacher outputs the filter skipped (sum of filter_skipped /
sum of filter_needed, over its runs), the chosen --kd-weight and the wall time.
"""
import argparse
import json
import statistics

LABELS = {"ce": "ce (MSE alone)", "kd-fm": "kd(fm)", "kd-comp": "kd(comp)", "avg-kd": "avg-kd",
          "ca-mkd": "ca-mkd", "fitnet-fm": "fitnet(fm)+kd", "dd-fm": "diversedistill (fm only)",
          "dd": "diversedistill (fm+comp)", "dd-filter": "diversedistill filtered (0.3)"}


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--teacher", action="append", default=[], required=True,
                        help="NAME=TEST_RMSE,LONG_TAIL_RMSE")
    parser.add_argument("--fit-seconds", type=float, default=0)
    options = parser.parse_args()
    teachers = {}
    for text in options.teacher:
        name, _, values = text.partition("=")
        overall, tail = (float(v) for v in values.split(","))
        teachers[name] = {"test_rmse": overall, "long_tail_rmse": tail}
    runs = [json.loads(line) for line in open(options.runs)]
    runs = [r for r in runs if r["tag"].startswith("final-")]
    methods = [m for m in LABELS if any(r["method"] == m for r in runs)]
    rows = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        rows[method] = {
            "seeds": sorted(r["seed"] for r in mine),
            "test_rmse": mean_std([r["test_rmse"] for r in mine]),
            "long_tail_rmse": mean_std([r["long_tail_rmse"] for r in mine]),
            "kd_weight": mine[0]["kd_weight"], "lr": mine[0]["lr"], "epochs": mine[0]["epochs"],
            "seconds": sum(r["seconds"] for r in mine),
            "filter_needed": sum(r["filter_needed"] for r in mine),
            "filter_skipped": sum(r["filter_skipped"] for r in mine),
        }
    best = min(teachers, key=lambda n: teachers[n]["test_rmse"])

    def recovered(value, teacher, key="test_rmse"):
        """(ce - value) / (ce - teacher) in `key`; None without ce or when ce is not worse."""
        ce = rows.get("ce", {}).get(key, (None,))[0]
        gap = ce - teachers[teacher][key] if ce is not None else 0
        return None if ce is None or gap <= 0 else (ce - value) / gap

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.0f}%"

    lines = ["| method | RMSE | long tail | gap recovered vs fm | vs best teacher "
             f"({best}) | long-tail gap vs fm | skipped | kd-weight | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, teacher in teachers.items():
        lines.append(f"| teacher {name} | {teacher['test_rmse']:.4f} | "
                     f"{teacher['long_tail_rmse']:.4f} | | | | | | |")
    for method, row in rows.items():
        m, s = row["test_rmse"]
        tm, ts = row["long_tail_rmse"]
        fm = recovered(m, "fm") if "fm" in teachers else None
        bt = recovered(m, best)
        tail = recovered(tm, "fm", "long_tail_rmse") if "fm" in teachers else None
        row["gap_recovered_fm"], row["gap_recovered_best"] = fm, bt
        row["long_tail_gap_recovered_fm"] = tail
        skipped = (f"{100 * row['filter_skipped'] / row['filter_needed']:.0f}%"
                   if row["filter_needed"] else "")
        lines.append(f"| {LABELS[method]} | {m:.4f}±{s:.4f} | {tm:.4f}±{ts:.4f} | {percent(fm)} | "
                     f"{percent(bt)} | {percent(tail)} | {skipped} | {row['kd_weight']:g} | "
                     f"{row['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    if options.fit_seconds:
        text += f"\nteachers fitted in {options.fit_seconds:.0f} s (0: existing checkpoints)\n"
    with open(options.out + ".md", "w") as handle:
        handle.write(text)
    with open(options.out + ".json", "w") as handle:
        json.dump({"teachers": teachers, "methods": rows, "fit_seconds": options.fit_seconds},
                  handle, indent=1)
        handle.write("\n")
    print(text, end="")


if __name__ == "__main__":
    main()
