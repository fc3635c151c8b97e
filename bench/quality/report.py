#!/usr/bin/env python3
"""Summarizes bench/quality.sh runs into bench/results/quality.md and quality.json.

usage: report.py WORK RESULTS [--final SECONDS]
Reads WORK/chosen.json, WORK/teachers/*.eval|*.fit_seconds, WORK/runs/*.jsonl|*.wall.
Only runs whose metrics hold the final epoch count; a table with missing seeds says so.
"""
import json
import os
import re
import statistics
import sys

work, results = sys.argv[1], sys.argv[2]
final_seconds = None
if "--final" in sys.argv:
    final_seconds = int(sys.argv[sys.argv.index("--final") + 1])

chosen = json.load(open(os.path.join(work, "chosen.json")))
EPOCHS = int(chosen["epochs"])
SEEDS = chosen["seeds"].split()

METHODS = [
    ("ce", "ce (student alone)", "—"),
    ("kd-fm", "kd(fm)", "fm"),
    ("kd-comp", "kd(comp)", "comp"),
    ("avg-kd", "avg-kd", "fm+comp"),
    ("ca-mkd", "ca-mkd", "fm+comp"),
    ("fitnet-fm", "fitnet(fm)+kd(fm)", "fm"),
    ("dd-fm", "DiverseDistill (fm only)", "fm"),
    ("dd-both", "DiverseDistill (fm+comp)", "fm+comp"),
    ("dd-filter", "DiverseDistill (fm+comp, filtered)", "fm+comp"),
]
BASELINES = ["ce", "kd-fm", "kd-comp", "avg-kd", "ca-mkd", "fitnet-fm"]
TABLES = [("A7", "full"), ("A7", "few"), ("A14", "full"), ("A14", "few")]
VIEW = {"A7": "pool7", "A14": "pool14"}
STUDENT = {"A7": "mlp:49-64-64-10", "A14": "mlp:196-64-64-10"}
COMP = {"A7": "comp7", "A14": "comp14"}


def load_run(name):
    path = os.path.join(work, "runs", name + ".jsonl")
    if not os.path.exists(path):
        return None
    lines = [json.loads(l) for l in open(path) if l.strip()]
    lines = [l for l in lines if "epoch" in l]  # not the run's configuration line
    if not lines or lines[-1]["epoch"] != EPOCHS:
        return None
    last = lines[-1]
    run = {
        "test_accuracy": last["test_accuracy"],
        "valid_accuracy": last.get("valid_accuracy", 0.0),
        "train_seconds": sum(l["seconds"] for l in lines),
    }
    wall = os.path.join(work, "runs", name + ".wall")
    if os.path.exists(wall):
        try:
            run["wall_seconds"] = float(open(wall).read().strip())
        except ValueError:
            pass
    needed = sum(t["filter_needed"] for l in lines for t in l["teachers"].values())
    skipped = sum(t["filter_skipped"] for l in lines for t in l["teachers"].values())
    received = sum(t["examples_received"] for t in last["teachers"].values())
    run["filter_needed"], run["filter_skipped"], run["examples_received"] = needed, skipped, received
    run["per_teacher"] = {name: [sum(l["teachers"][name]["filter_skipped"] for l in lines),
                                 sum(l["teachers"][name]["filter_needed"] for l in lines)]
                          for name in last["teachers"]}
    teachers = len(last["teachers"])
    train = last["train_examples"]
    # what an unfiltered --cache off run asks: every example from every teacher every epoch
    run["outputs_if_unfiltered"] = teachers * train * EPOCHS
    return run


def teacher_acc(name):
    path = os.path.join(work, "teachers", name + ".eval")
    if not os.path.exists(path):
        return None
    m = re.search(r"accuracy=([0-9.]+)", open(path).read())
    return float(m.group(1)) if m else None


def mean_std(values):
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


teachers = {}
for name, view, spec in [("fm", "full", "vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128"),
                         ("comp7", "pool7", "mlp:49-512-512-10"), ("comp14", "pool14", "mlp:196-512-512-10")]:
    fit = os.path.join(work, "teachers", name + ".fit_seconds")
    teachers[name] = {"view": view, "model": spec, "test_accuracy": teacher_acc(name),
                      "fit_seconds": int(open(fit).read()) if os.path.exists(fit) else None}

out = {"chosen": chosen, "teachers": teachers, "tables": {}, "tuning": {}, "ablation": {}}
md = []
md.append("# DiverseDistill on Fashion-MNIST: the results table\n")
md.append("Produced by `bench/quality.sh` (`make bench-quality`); machine-readable copy in "
          "`bench/results/quality.json`. Test accuracy in %, mean ± sample std over seeds "
          f"{', '.join(SEEDS)}; every method uses the same student, {EPOCHS} epochs, batch "
          f"{chosen['batch']}, AdamW lr {chosen['lr']} constant (the trainer has no schedule), and the "
          f"same label seed ({chosen['label_seed']}) in the few-label regime (10% of the training "
          "labels visible; teachers answer for all 60k images). Table runs use `--holdout 0` "
          "(all 60k training images); the test set is read only for these tables.\n")
md.append("**gap recovered** = (acc − acc_ce) / (acc_best_teacher − acc_ce), from the mean "
          "accuracies, where the best teacher is the committee member with the best test accuracy "
          "(`student-trainer eval`). **skipped** = teacher outputs not computed: Σ filter_skipped / "
          "Σ filter_needed over the filtered epochs and both teachers (the first epoch is an "
          "unfiltered warm-up), and in brackets the saving over the whole run, 1 − examples "
          "received / (teachers × examples × epochs), counted from what the teacher servers "
          "actually sent. **wall** = mean wall-clock seconds of one run including teacher "
          "waits, with two runs sharing a 2-core machine that also served the teachers (and ran "
          "other work).\n")

md.append("## Committee\n")
md.append("| teacher | view | model | test acc | fit time |")
md.append("|---|---|---|---|---|")
for name, t in teachers.items():
    acc = f"{100 * t['test_accuracy']:.2f}" if t["test_accuracy"] is not None else "—"
    fit = f"{t['fit_seconds']} s" if t["fit_seconds"] else "(existing)"
    md.append(f"| {name} | {t['view']} | `{t['model']}` | {acc} | {fit} |")
md.append("")

claims = {}
for tab, labels in TABLES:
    key = f"{tab}-{labels}"
    comp = COMP[tab]
    accs = [a for a in (teachers["fm"]["test_accuracy"], teachers[comp]["test_accuracy"]) if a is not None]
    best_teacher = max(accs) if accs else None
    best_name = "fm" if best_teacher == teachers["fm"]["test_accuracy"] else comp
    rows = {}
    for method, label, who in METHODS:
        runs = [r for r in (load_run(f"{key}-{method}-s{s}") for s in SEEDS) if r]
        if not runs:
            continue
        m, sd = mean_std([r["test_accuracy"] for r in runs])
        row = {"label": label, "teachers": who, "seeds_done": len(runs),
               "test_accuracy": [r["test_accuracy"] for r in runs], "mean": m, "std": sd,
               "wall_seconds": statistics.mean([r.get("wall_seconds", r["train_seconds"]) for r in runs])}
        needed = sum(r["filter_needed"] for r in runs)
        if needed:
            row["skipped_filtered_epochs"] = sum(r["filter_skipped"] for r in runs) / needed
            row["skipped_per_teacher"] = {
                name: sum(r["per_teacher"][name][0] for r in runs) / max(1, sum(r["per_teacher"][name][1] for r in runs))
                for name in runs[0]["per_teacher"]}
            row["saved_whole_run"] = 1 - sum(r["examples_received"] for r in runs) / sum(
                r["outputs_if_unfiltered"] for r in runs)
        rows[method] = row
    ce = rows.get("ce", {}).get("mean")
    for row in rows.values():
        if ce is not None and best_teacher is not None and best_teacher != ce:
            row["gap_recovered"] = (row["mean"] - ce) / (best_teacher - ce)
    out["tables"][key] = {"view": VIEW[tab], "student": STUDENT[tab], "labels": labels,
                          "best_teacher": best_name, "best_teacher_accuracy": best_teacher,
                          "rows": rows}
    title = {"full": "full labels (60k)", "few": "few labels (10%)"}[labels]
    md.append(f"## {tab} ({VIEW[tab]}, student `{STUDENT[tab]}`), {title}\n")
    if best_teacher is not None:
        md.append(f"Best teacher: {best_name} at {100 * best_teacher:.2f}%.\n")
    md.append("| method | teachers | test acc (%) | gap recovered | skipped | wall (s) | seeds |")
    md.append("|---|---|---|---|---|---|---|")
    for method, label, who in METHODS:
        row = rows.get(method)
        if not row:
            md.append(f"| {label} | {who} | not run | | | | 0/{len(SEEDS)} |")
            continue
        gap = f"{100 * row['gap_recovered']:.0f}%" if "gap_recovered" in row else "—"
        skip = (f"{100 * row['skipped_filtered_epochs']:.1f}% ({100 * row['saved_whole_run']:.1f}%)"
                if "skipped_filtered_epochs" in row else "—")
        md.append(f"| {label} | {who} | {100 * row['mean']:.2f} ± {100 * row['std']:.2f} | {gap} | "
                  f"{skip} | {row['wall_seconds']:.0f} | {row['seeds_done']}/{len(SEEDS)} |")
    f = rows.get("dd-filter")
    if f and "skipped_per_teacher" in f:
        md.append("")
        md.append("Filtered run, outputs skipped per teacher (filtered epochs): " + ", ".join(
            f"{name} {100 * v:.1f}%" for name, v in f["skipped_per_teacher"].items()) + ".")
    md.append("")
    # the three claims, per table
    c = {}
    if "dd-fm" in rows and "dd-both" in rows:
        d = rows["dd-both"]["mean"] - rows["dd-fm"]["mean"]
        c["1_comp_helps_dd"] = {"answer": d > 0, "delta_points": 100 * d}
    base = {m: rows[m] for m in BASELINES if m in rows}
    if "dd-both" in rows and base:
        bm = max(base, key=lambda m: base[m]["mean"])
        dd = rows["dd-both"]
        margin = dd["mean"] - base[bm]["mean"]
        one_std = max(dd["std"], base[bm]["std"])
        c["2_dd_beats_baselines"] = {"answer": margin > one_std, "beats_means": margin > 0,
                                     "best_baseline": bm, "margin_points": 100 * margin,
                                     "std_points": 100 * one_std}
    if "dd-filter" in rows and "dd-both" in rows and "skipped_filtered_epochs" in rows["dd-filter"]:
        f, u = rows["dd-filter"], rows["dd-both"]
        drop = u["mean"] - f["mean"]
        c["3_filter_saves"] = {"answer": f["skipped_filtered_epochs"] >= 0.30 and drop <= 0.003,
                               "skipped": f["skipped_filtered_epochs"], "saved_whole_run": f["saved_whole_run"],
                               "accuracy_drop_points": 100 * drop}
    claims[key] = c
out["claims"] = claims

md.append("## The three claims, per table\n")
md.append("(1) adding the complementary teacher improves DiverseDistill over foundation-only; "
          "(2) DiverseDistill (fm+comp) beats every baseline by more than one std (the larger "
          "of the two stds); (3) filtering skips ≥ 30% of teacher outputs (filtered epochs) "
          "within 0.3 points of unfiltered accuracy.\n")
md.append("| table | (1) dd(fm+comp) − dd(fm) | (2) dd(fm+comp) − best baseline | (3) skipped / accuracy change |")
md.append("|---|---|---|---|")
yn = lambda b: "**yes**" if b else "**no**"
for key, c in claims.items():
    one = c.get("1_comp_helps_dd")
    two = c.get("2_dd_beats_baselines")
    three = c.get("3_filter_saves")
    s1 = f"{yn(one['answer'])}: {one['delta_points']:+.2f} pt" if one else "—"
    s2 = (f"{yn(two['answer'])}: {two['margin_points']:+.2f} pt vs {two['best_baseline']} "
          f"(std {two['std_points']:.2f})" if two else "—")
    s3 = (f"{yn(three['answer'])}: {100 * three['skipped']:.1f}% skipped "
          f"({100 * three['saved_whole_run']:.1f}% of the run), {-three['accuracy_drop_points']:+.2f} pt"
          if three else "—")
    md.append(f"| {key} | {s1} | {s2} | {s3} |")
md.append("")

md.append("## Hyper-parameters and how they were chosen\n")
md.append(f"Chosen on ONE regime — {chosen['tune_table']} few labels, seed {chosen['tune_seed']}, "
          f"`--holdout {chosen['tune_holdout']}` (the last {chosen['tune_holdout']} training images, "
          "never trained on) — by `valid_accuracy` only; the test set was not looked at. "
          "Stage 1: kd-weight ∈ {0.5, 0.9} × temperature ∈ {2, 4} on kd(comp); the winner is used "
          "by every distillation method (kd, avg-kd, ca-mkd, fitnet, DiverseDistill). Stage 2: "
          "the DiverseDistill router target ∈ {learnability, reliability, end-to-end} (fm+comp). "
          "Stage 2b: the DiverseDistill variant — committee-answer CE on (λ_ans = 1) or off "
          "(`--dd-answer-weight 0`) × interactive probes through the teachers' frozen heads off "
          "or on (`--dd-interactive`, λ_q = λ_a = 1) — by the mean valid accuracy over holdout "
          f"seeds {chosen.get('tune_variant_seeds', '1')}. "
          "Stage 3: filter θ ∈ {0.3, 0.5} with `--cache off`: the largest θ whose valid accuracy "
          "is within 0.3 points of the unfiltered winner (else the best). Other "
          "DiverseDistill settings are the trainer's defaults (feature auto = ViT tokens, "
          "λ_α = 1, τ = 1, alignment off, exploration 0.05, warm-up 1 epoch); fitnet "
          "weight 1.\n")
md.append(f"**Chosen:** kd-weight {chosen['kd_weight']}, temperature {chosen['temperature']}, "
          f"router `{chosen['dd_router']}`, variant `{chosen.get('dd_variant', 'base')}` "
          f"(`{chosen.get('dd_extra', '') or 'no extra options'}`), θ = {chosen['dd_filter']}; "
          f"{EPOCHS} epochs, batch {chosen['batch']}, lr {chosen['lr']}.\n")
md.append("| tuning run | valid acc (%) |")
md.append("|---|---|")
tune_dir = os.path.join(work, "runs")
for f in sorted(os.listdir(tune_dir)):
    if f.startswith("tune-") and f.endswith(".jsonl"):
        r = load_run(f[:-6])
        if r:
            extra = ""
            if r["filter_needed"]:
                extra = f" (skipped {100 * r['filter_skipped'] / r['filter_needed']:.1f}%)"
            out["tuning"][f[:-6]] = {"valid_accuracy": r["valid_accuracy"],
                                     "skipped": r["filter_skipped"] / r["filter_needed"] if r["filter_needed"] else None}
            md.append(f"| {f[:-6]} | {100 * r['valid_accuracy']:.2f}{extra} |")
md.append("")

abl = sorted(f[:-6] for f in os.listdir(tune_dir) if f.startswith("abl-") and f.endswith(".jsonl"))
if abl:
    groups = {}
    for name in abl:
        r = load_run(name)
        if r:
            out["ablation"][name] = {k: r[k] for k in ("test_accuracy", "train_seconds")}
            groups.setdefault(re.sub(r"-s[0-9]+$", "", name), []).append((name[name.rindex("-s") + 2:], r))
    md.append("## Ablation\n")
    md.append("A14 few labels, table settings (`--holdout 0`), each row the chosen "
              f"DiverseDistill (router `{chosen['dd_router']}`, variant "
              f"`{chosen.get('dd_variant', 'base')}`, ViT tokens, alignment off, fm+comp) with one "
              "thing changed; test accuracy (%) per seed and mean. These runs choose nothing. "
              "The DiverseDistill (fm+comp) row of the A14 few-label table, same seeds, is the "
              "reference.\n")
    md.append("| variant | per seed | mean ± std |")
    md.append("|---|---|---|")
    for g, runs in groups.items():
        per = ", ".join(f"s{seed}: {100 * r['test_accuracy']:.2f}" for seed, r in runs)
        accuracies = [r["test_accuracy"] for _, r in runs]
        m = statistics.mean(accuracies)
        sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        md.append(f"| {g[len('abl-A14-few-'):]} | {per} | {100 * m:.2f} ± {100 * sd:.2f} |")
    md.append("")

notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
if os.path.exists(notes):
    md.append(open(notes).read())
if final_seconds is not None:
    out["wall_seconds_total"] = final_seconds
    md.append(f"Wall time of the last invocation of the script: {final_seconds} s "
              f"({final_seconds / 60:.1f} min; runs already finished are skipped, see the notes "
              "for the from-scratch time).\n")
else:
    md.append("*(partial: the script was still running when this was written)*\n")

os.makedirs(results, exist_ok=True)
open(os.path.join(results, "quality.md"), "w").write("\n".join(md))
json.dump(out, open(os.path.join(results, "quality.json"), "w"), indent=1)
print(f"wrote {results}/quality.md and quality.json")
