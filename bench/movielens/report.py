#!/usr/bin/python3
"""report.py: the MovieLens tables and the paper's five claims from quality.sh's work folder.

    report.py --dir DIR --out PREFIX

Reads DIR/teachers.jsonl (every teacher fit of the grids), DIR/runs.jsonl (every student run:
tune-* on the valid split, final-* for the table) and DIR/chosen.json (what the tuning chose),
and writes PREFIX.md and PREFIX.json:
- the teachers' grids with valid/test RMSE (the lowest valid RMSE is kept);
- per method, mean +- std (over seeds, sample std) of the test RMSE overall and on the long
  tail, the gap recovered (ce - method) / (ce - teacher) against the foundation teacher fm and
  against the best teacher (lowest test RMSE), the same on the long tail against fm ("n/a"
  where ce is not worse than the teacher: no gap to recover), the share of teacher outputs the
  filter skipped in its filtered epochs (sum of filter_skipped / sum of filter_needed; the
  first epoch is the unfiltered warm-up), the outputs the teachers computed for one run (the
  rows the trainer received, which the teachers' own counters equal:
  trainer:test_diversedistill_filtering_saves_real_work; mean over seeds), the chosen
  --kd-weight and the wall time summed over seeds;
- DiverseDistill's router ablation (temperature x filter threshold, seed 1, valid split);
- the five claims, each answered yes or no from those numbers; "by more than one std" means the
  difference of means exceeds the larger of the two stds.
"""
import argparse
import json
import statistics

LABELS = {"ce": "ce (MSE alone)", "kd-fm": "kd(fm)", "kd-comp": "kd(comp)", "avg-kd": "avg-kd",
          "ca-mkd": "ca-mkd", "fitnet-fm": "fitnet(fm)+kd", "dd-fm": "diversedistill (fm only)",
          "dd": "diversedistill (fm+comp)", "dd-filter": "diversedistill filtered",
          "kd-fm-transfer": "kd(fm) + transfer split",
          "dd-transfer": "diversedistill (fm+comp) + transfer split"}
BASELINES = ["ce", "kd-fm", "kd-comp", "avg-kd", "ca-mkd", "fitnet-fm"]


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def lines_of(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def percent(value):
    return "n/a" if value is None else f"{100 * value:.0f}%"


def skipped_share(needed, skipped):
    return skipped / needed if needed else None


class Table:
    """The final runs, grouped by method."""

    def __init__(self, runs, teachers):
        self.teachers = teachers
        self.rows = {}
        for method in LABELS:
            mine = [r for r in runs if r["method"] == method]
            if not mine:
                continue
            self.rows[method] = {
                "seeds": sorted(r["seed"] for r in mine),
                "test_rmse": mean_std([r["test_rmse"] for r in mine]),
                "test_mae": mean_std([r.get("test_mae", float("nan")) for r in mine]),
                "long_tail_rmse": mean_std([r["long_tail_rmse"] for r in mine]),
                "valid_rmse": mean_std([r["valid_rmse"] for r in mine]),
                "kd_weight": mine[0]["kd_weight"], "tau": mine[0].get("tau"),
                "theta": mine[0].get("theta"), "seconds": sum(r["seconds"] for r in mine),
                "filter_needed": sum(r["filter_needed"] for r in mine),
                "filter_skipped": sum(r["filter_skipped"] for r in mine),
                "teacher_outputs": statistics.mean(r.get("teacher_outputs", 0) for r in mine),
                "asked_unfiltered": statistics.mean(r.get("asked_unfiltered", 0) for r in mine),
            }
        self.best = min(teachers, key=lambda n: teachers[n]["test_rmse"])
        for row in self.rows.values():
            row["gap_recovered_fm"] = self.recovered(row["test_rmse"][0], "fm")
            row["gap_recovered_best"] = self.recovered(row["test_rmse"][0], self.best)
            row["long_tail_gap_recovered_fm"] = self.recovered(row["long_tail_rmse"][0], "fm",
                                                               "long_tail_rmse")

    def recovered(self, value, teacher, key="test_rmse"):
        """(ce - value) / (ce - teacher) in `key`; None without ce or when ce is not worse."""
        if "ce" not in self.rows or teacher not in self.teachers:
            return None
        ce = self.rows["ce"][key][0]
        gap = ce - self.teachers[teacher][key]
        return None if gap <= 0 else (ce - value) / gap

    def mean(self, method, key="test_rmse"):
        return self.rows[method][key][0]

    def std(self, method, key="test_rmse"):
        return self.rows[method][key][1]

    def text(self, method, key="test_rmse"):
        m, s = self.rows[method][key]
        return f"{m:.4f}±{s:.4f}"

    def better(self, a, b, key="test_rmse"):
        """a's RMSE lower than b's by more than the larger std."""
        return self.mean(b, key) - self.mean(a, key) > max(self.std(a, key), self.std(b, key))

    def markdown(self):
        lines = ["| method | RMSE | MAE | long tail | valid | gap recovered vs fm | vs best teacher "
                 f"({self.best}) | long-tail gap vs fm | skipped | teacher outputs | kd-weight | "
                 "seconds |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, teacher in self.teachers.items():
            lines.append(f"| teacher {name} | {teacher['test_rmse']:.4f} | "
                         f"{teacher.get('test_mae', float('nan')):.4f} | "
                         f"{teacher['long_tail_rmse']:.4f} | {teacher['valid_rmse']:.4f} "
                         "| | | | | | | |")
        for method, row in self.rows.items():
            share = skipped_share(row["filter_needed"], row["filter_skipped"])
            label = LABELS[method]
            if method == "dd-filter":
                label += f" (θ {row['theta']:g})"
            lines.append(f"| {label} | {self.text(method)} | "
                         f"{self.text(method, 'test_mae')} | "
                         f"{self.text(method, 'long_tail_rmse')} | "
                         f"{self.text(method, 'valid_rmse')} | "
                         f"{percent(row['gap_recovered_fm'])} | "
                         f"{percent(row['gap_recovered_best'])} | "
                         f"{percent(row['long_tail_gap_recovered_fm'])} | "
                         f"{percent(share) if share is not None else ''} | "
                         f"{row['teacher_outputs'] / 1000:.0f}k | "
                         f"{row['kd_weight']:g} | {row['seconds']:.0f} |")
        return "\n".join(lines) + "\n"


def claims(table):
    """The paper's claims, each (answer, sentence), from the table's numbers."""
    t, out = table, []
    have = lambda *methods: all(m in t.rows for m in methods)  # noqa: E731
    if have("ce", "kd-fm"):
        overall = t.rows["kd-fm"]["gap_recovered_fm"]
        tail = t.rows["kd-fm"]["long_tail_gap_recovered_fm"]
        gap = t.mean("ce") - t.teachers["fm"]["test_rmse"]
        if overall is not None:
            answer = overall < 0.4
            sentence = (f"kd(fm) recovers {percent(overall)} of the student's gap to fm overall "
                        f"(ce {t.text('ce')}, fm {t.teachers['fm']['test_rmse']:.4f}, kd(fm) "
                        f"{t.text('kd-fm')}); {percent(tail)} on the long tail")
        else:
            answer = tail is not None and tail < 0.4
            sentence = (f"overall there is no gap: the student alone ({t.text('ce')}) is already "
                        f"{-gap:.4f} better than fm ({t.teachers['fm']['test_rmse']:.4f}); on the "
                        f"long tail, where fm is better, kd(fm) recovers {percent(tail)}")
        out.append(("KD from the foundation teacher alone recovers < 40% of its gap", answer,
                    sentence))
    if have("dd", "dd-fm"):
        answer = t.better("dd", "dd-fm")
        out.append(("adding the complementary teacher helps DiverseDistill", answer,
                    f"fm+comp {t.text('dd')} vs fm only {t.text('dd-fm')} overall; long tail "
                    f"{t.text('dd', 'long_tail_rmse')} vs {t.text('dd-fm', 'long_tail_rmse')}"))
    if have("avg-kd", "kd-fm", "kd-comp"):
        single = min(("kd-fm", "kd-comp"), key=t.mean)
        answer = t.mean("avg-kd") > t.mean(single)
        beyond = t.better(single, "avg-kd")
        out.append(("naive averaging (avg-kd) does worse than the best single-teacher KD", answer,
                    f"avg-kd {t.text('avg-kd')} vs {LABELS[single]} {t.text(single)}"
                    + (" (by more than one std)" if beyond else " (within one std)")))
    if "dd" in t.rows:
        others = [b for b in BASELINES if b in t.rows]
        beaten = [b for b in others if t.better("dd", b)]
        best_other = min(others, key=t.mean)
        answer = len(beaten) == len(others)
        out.append(("DiverseDistill beats every baseline by more than one std", answer,
                    f"diversedistill (fm+comp) {t.text('dd')}; best baseline "
                    f"{LABELS[best_other]} {t.text(best_other)}; beaten by more than one std: "
                    f"{', '.join(LABELS[b] for b in beaten) or 'none'}"))
    if have("dd", "dd-filter"):
        row = t.rows["dd-filter"]
        share = skipped_share(row["filter_needed"], row["filter_skipped"]) or 0.0
        noise = max(t.std("dd"), t.std("dd-filter"))
        close = abs(t.mean("dd-filter") - t.mean("dd")) <= noise
        computed = row["teacher_outputs"] / row["asked_unfiltered"] if row["asked_unfiltered"] else 0
        out.append(("filtering skips >= 30% of teacher outputs within noise of unfiltered",
                    share >= 0.3 and close,
                    f"θ {row['theta']:g} skipped {percent(share)} of the (example, teacher) "
                    f"outputs of its filtered epochs; over the whole run (warm-up epoch included, "
                    f"--cache off) the teachers computed {row['teacher_outputs'] / 1000:.0f}k of "
                    f"{row['asked_unfiltered'] / 1000:.0f}k outputs ({percent(computed)}; "
                    f"unfiltered with the cache on: {t.rows['dd']['teacher_outputs'] / 1000:.0f}k); "
                    f"filtered {t.text('dd-filter')} vs unfiltered {t.text('dd')} "
                    + ("(within one std)" if close else "(more than one std apart)")))
    return out


def transfer_effect(table):
    """One sentence per method trained with and without --transfer-split."""
    t, parts = table, []
    for method in ("kd-fm", "dd"):
        if method in t.rows and f"{method}-transfer" in t.rows:
            with_split = f"{method}-transfer"
            verdict = ("helps" if t.better(with_split, method) else
                       "hurts" if t.better(method, with_split) else "changes nothing beyond one std")
            parts.append(f"{LABELS[method]}: {t.text(with_split)} with the split vs "
                         f"{t.text(method)} without (long tail "
                         f"{t.text(with_split, 'long_tail_rmse')} vs "
                         f"{t.text(method, 'long_tail_rmse')}): it {verdict}")
    return "; ".join(parts) + "." if parts else ""


def ablation(runs):
    """DiverseDistill's router on seed 1, the valid split: tau x theta (tune-dd*, tune-ddf-*)."""
    rows = [r for r in runs if r["tag"].startswith(("tune-dd-w", "tune-ddf-"))]
    rows.sort(key=lambda r: (r["tau"], r["theta"], r["kd_weight"]))
    lines = ["| run | τ | θ | kd-weight | valid RMSE | test RMSE | skipped | teacher outputs | "
             "router weight fm/comp |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = skipped_share(r["filter_needed"], r["filter_skipped"])
        weights = "/".join(f"{r['router_weight'][n]:.3f}" for n in ("fm", "comp")
                           if n in r.get("router_weight", {}))
        lines.append(f"| {r['tag']} | {r['tau']:g} | {r['theta']:g} | {r['kd_weight']:g} | "
                     f"{r['valid_rmse']:.4f} | {r['test_rmse']:.4f} | "
                     f"{percent(share) if share is not None else ''} | "
                     f"{r.get('teacher_outputs', 0) / 1000:.0f}k | {weights} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="quality.sh's work folder")
    parser.add_argument("--out", required=True, help="writes OUT.md and OUT.json")
    options = parser.parse_args()
    fits = lines_of(f"{options.dir}/teachers.jsonl")
    runs = lines_of(f"{options.dir}/runs.jsonl")
    with open(f"{options.dir}/chosen.json") as handle:
        chosen = json.load(handle)
    teachers = {}
    for name in ("fm", "comp"):
        fit = next(f for f in fits if f["tag"] == chosen[name])
        teachers[name] = fit
    for run in runs:  # what the teachers computed: the trainer's received rows (cumulative)
        with open(f"{options.dir}/{run['tag']}.jsonl") as handle:
            epochs = [json.loads(line) for line in handle if '"epoch"' in line]
        run["teacher_outputs"] = sum(t["examples_received"] for t in epochs[-1]["teachers"].values())
        run["asked_unfiltered"] = sum(e["train_examples"] * len(e["teachers"]) for e in epochs)
    table = Table([r for r in runs if r["tag"].startswith("final-")], teachers)
    student = chosen["student"]
    try:
        invocations = lines_of(f"{options.dir}/invocations.jsonl")
    except FileNotFoundError:
        invocations = []
    invocations = invocations or [{"date": "?", "fit_seconds": chosen["fit_seconds"],
                                   "total_seconds": chosen["total_seconds"]}]
    timing = "; ".join(f"{i['date']}: {i['total_seconds'] / 60:.1f} min, of which the teachers' "
                       f"fits {i['fit_seconds'] / 60:.1f} min" for i in invocations)
    text = ["# MovieLens latest-small: the committee's table (issue 16)", "",
            f"`make bench-quality` (its MovieLens section, bench/movielens/quality.sh), "
            f"{len(invocations)} invocation(s) on this work folder (a rerun trains only what is "
            f"missing): {timing}; seeds {chosen['seeds']}. Everything was "
            "chosen on the `valid` split (each user's second-to-last rating); test = each "
            "user's last rating (671), long tail = the test ratings whose movie has < 5 train "
            "ratings.", "",
            "## Teachers (each grid point fitted; the lowest valid RMSE kept)", "",
            "| fit | spec | weight decay | epochs | parameters | valid | test | long tail | "
            "seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for fit in fits:
        mark = " **(kept)**" if fit["tag"] in (chosen["fm"], chosen["comp"]) else ""
        text.append(f"| {fit['tag']}{mark} | `{fit['spec']}` | {fit['weight_decay']:g} | "
                    f"{fit['epochs']} | {fit['parameters']:,} | {fit['valid_rmse']:.4f} | "
                    f"{fit['test_rmse']:.4f} | {fit['long_tail_rmse']:.4f} | "
                    f"{fit['seconds']:.0f} |")
    ratio = teachers["fm"]["parameters"] / student["parameters"] if student["parameters"] else 0
    text += ["", f"Student `{student['spec']}` on `pair` ({student['parameters']:,} parameters; "
             f"compression fm/student {ratio:.1f}x): lr {student['lr']:g}, {student['epochs']} "
             f"epochs, weight decay {student['weight_decay']:g}, {student['schedule']} schedule "
             "(the best ce on valid); DiverseDistill's router temperature "
             f"--dd-tau {chosen['dd_tau']:g} and filter θ {chosen['dd_filter']:g} chosen on "
             f"valid (θ: the largest within {chosen['noise']:g} RMSE of unfiltered).", "",
             "## The table (mean ± std over seeds; seconds summed over seeds)", "",
             table.markdown().rstrip("\n"), "",
             "## DiverseDistill's router (seed 1, tuning runs)", "",
             ablation(runs).rstrip("\n"), "", "## The paper's claims", ""]
    answers = claims(table)
    for number, (claim, answer, sentence) in enumerate(answers):
        text.append(f"{number}. {claim}: **{'yes' if answer else 'no'}**: {sentence}.")
    transfer = transfer_effect(table)
    if transfer:
        text += ["", "## The transfer split (unlabelled pairs only the teachers annotate)", "",
                 transfer]
    markdown = "\n".join(text) + "\n"
    with open(options.out + ".md", "w") as handle:
        handle.write(markdown)
    with open(options.out + ".json", "w") as handle:
        json.dump({"chosen": chosen, "teachers": teachers, "fits": fits,
                   "methods": table.rows,
                   "claims": [{"claim": c, "answer": a, "numbers": s} for c, a, s in answers]},
                  handle, indent=1)
        handle.write("\n")
    print(markdown, end="")


if __name__ == "__main__":
    main()
