#!/usr/bin/python3
"""Summarizes bench/quality.sh runs into RESULTS/quality.md and quality.json.

usage: report.py WORK RESULTS [--final SECONDS] [--trained N]

Reads WORK/chosen.json (what the holdout chose), WORK/teachers/*.eval|*.fit_seconds|*.args,
WORK/runs/*.jsonl|*.wall|*.args and WORK/phases.jsonl, and writes:
- the committee (test accuracy, fit time) and the teacher outputs the one-epoch prefill runs
  asked for (every later replay reads those records, so the teachers computed them once);
- the student recipe per table: ce's valid accuracy over lr x epochs (cosine) on the holdout;
- per table (A7/A14 x full/few) and for the three-teacher table: per method, mean +- sample std
  of test accuracy over seeds, the gap recovered (acc - acc_ce) / (acc_teacher - acc_ce) against
  the foundation teacher fm and against the best teacher of the committee, the share of
  (example, teacher) outputs the filter skipped in its filtered epochs (the first epoch is an
  unfiltered warm-up) and the outputs the teachers computed for the run (live: examples
  received, which the teachers' own counters equal; a filtered replay: every example x teacher
  x epoch less the pairs its filter skipped, what live --cache off teachers would compute),
  mean wall seconds per run;
- the three claims per table, each answered yes or no from those numbers ("by more than one
  std": the difference of means exceeds the larger of the two stds);
- the tuning runs (valid accuracy) and the ablation (test accuracy), and the phases' wall time.
Only runs whose metrics hold their final epoch count; a row with missing seeds says so.
"""
import json
import os
import re
import statistics
import sys

work, results = sys.argv[1], sys.argv[2]
final_seconds = int(sys.argv[sys.argv.index("--final") + 1]) if "--final" in sys.argv else None
trained = int(sys.argv[sys.argv.index("--trained") + 1]) if "--trained" in sys.argv else None

chosen = json.load(open(os.path.join(work, "chosen.json")))
SEEDS = chosen["seeds"].split()
RECIPES = chosen["recipes"]
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
# The three-teacher table: its own runs (A14-few3-*) plus the A14 few-label rows it shares.
THREE = [
    ("ce", "ce (student alone)", "—", "A14-few-ce"),
    ("kd-fm", "kd(fm)", "fm", "A14-few-kd-fm"),
    ("kd-vit", "kd(vit)", "vit", "A14-few3-kd-vit"),
    ("kd-comp", "kd(comp)", "comp", "A14-few-kd-comp"),
    ("avg-kd3", "avg-kd", "fm+vit+comp", "A14-few3-avg-kd3"),
    ("ca-mkd3", "ca-mkd", "fm+vit+comp", "A14-few3-ca-mkd3"),
    ("dd-both", "DiverseDistill (fm+comp)", "fm+comp", "A14-few-dd-both"),
    ("dd-three", "DiverseDistill (fm+vit+comp)", "fm+vit+comp", "A14-few3-dd-three"),
    ("dd-three-filter", "DiverseDistill (fm+vit+comp, filtered)", "fm+vit+comp", "A14-few3-dd-three-filter"),
]
THREE_BASELINES = ["ce", "kd-fm", "kd-vit", "kd-comp", "avg-kd3", "ca-mkd3"]
TABLES = [t.split(":") for t in chosen["tables"].split()]
VIEW = {"A7": "pool7", "A14": "pool14"}
STUDENT = {"A7": "mlp:49-64-64-10", "A14": "mlp:196-64-64-10"}
COMP = {"A7": "comp7", "A14": "comp14"}
RUNS = os.path.join(work, "runs")


def pct(x, digits=1):
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def load_run(name, epochs=None):
    """The final metrics of run NAME, or None if it did not finish (epochs: its epoch count)."""
    path = os.path.join(RUNS, name + ".jsonl")
    if not os.path.exists(path):
        return None
    lines = [json.loads(line) for line in open(path) if line.strip()]
    config = next((line["config"] for line in lines if "config" in line), {})
    lines = [line for line in lines if "epoch" in line]
    want = epochs if epochs is not None else config.get("epochs")
    if not lines or lines[-1]["epoch"] != want:
        return None
    last = lines[-1]
    run = {"test_accuracy": last["test_accuracy"], "valid_accuracy": last.get("valid_accuracy"),
           "train_seconds": sum(line["seconds"] for line in lines), "epochs": last["epoch"],
           "replay": read(os.path.join(RUNS, name + ".args"), "").startswith("replay ")}
    wall = os.path.join(RUNS, name + ".wall")
    if os.path.exists(wall):
        try:
            run["wall_seconds"] = float(open(wall).read().strip())
        except ValueError:
            pass
    teachers = last.get("teachers", {})
    run["filter_needed"] = sum(t["filter_needed"] for line in lines for t in line["teachers"].values())
    run["filter_skipped"] = sum(t["filter_skipped"] for line in lines for t in line["teachers"].values())
    run["received"] = {n: t["examples_received"] for n, t in teachers.items()}
    run["per_teacher_skipped"] = {
        n: (sum(line["teachers"][n]["filter_skipped"] for line in lines),
            sum(line["teachers"][n]["filter_needed"] for line in lines)) for n in teachers}
    # what an unfiltered --cache off run asks: every example from every teacher every epoch
    run["asked_unfiltered"] = len(teachers) * last["train_examples"] * last["epoch"]
    run["train_examples"] = last["train_examples"]
    if run["replay"] and run["filter_needed"]:
        # a filtered replay: the outputs live teachers with --cache off would compute
        run["received"] = {n: run["asked_unfiltered"] // len(teachers) - run["per_teacher_skipped"][n][0]
                           for n in teachers}
    return run


def teacher_acc(name):
    path = os.path.join(work, "teachers", name + ".eval")
    if not os.path.exists(path):
        return None
    m = re.search(r"accuracy=([0-9.]+)", open(path).read())
    return float(m.group(1)) if m else None


def read(path, default=None):
    return open(path).read().strip() if os.path.exists(path) else default


teachers = {}
for name, view, role in [("fm", "full", "foundation"), ("vit", "full", "second foundation (three-teacher table)"),
                         ("comp7", "pool7", "complementary, A7"), ("comp14", "pool14", "complementary, A14")]:
    args = read(os.path.join(work, "teachers", name + ".args"), "")
    spec = re.search(r"--model (\S+)", args)
    teachers[name] = {"view": view, "role": role, "model": spec.group(1) if spec else None,
                      "fit_args": args, "test_accuracy": teacher_acc(name),
                      "fit_seconds": int(read(os.path.join(work, "teachers", name + ".fit_seconds"), "0")) or None}


class Table:
    def __init__(self, key, rows, members):
        self.key, self.rows = key, rows
        self.members = {m: teachers[m]["test_accuracy"] for m in members if teachers[m]["test_accuracy"] is not None}
        self.best = max(self.members, key=self.members.get) if self.members else None

    def mean(self, m):
        return self.rows[m]["mean"]

    def std(self, m):
        return self.rows[m]["std"]

    def text(self, m):
        return f"{100 * self.mean(m):.2f} ± {100 * self.std(m):.2f}"

    def better(self, a, b):
        """a beats b by more than one std (the larger of the two)."""
        return self.mean(a) - self.mean(b) > max(self.std(a), self.std(b))


def make_rows(specs, key_of, epochs):
    rows = {}
    for method, label, who, stem in specs:
        runs = [r for r in (load_run(f"{stem}-s{s}", epochs) for s in SEEDS) if r]
        if not runs:
            continue
        accs = [r["test_accuracy"] for r in runs]
        row = {"label": label, "teachers": who, "seeds_done": len(runs), "test_accuracy": accs,
               "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               "wall_seconds": statistics.mean(r.get("wall_seconds", r["train_seconds"]) for r in runs),
               "replay": all(r["replay"] for r in runs),
               "teacher_outputs": statistics.mean(sum(r["received"].values()) for r in runs),
               "asked_unfiltered": statistics.mean(r["asked_unfiltered"] for r in runs)}
        needed = sum(r["filter_needed"] for r in runs)
        if needed:
            row["skipped_filtered_epochs"] = sum(r["filter_skipped"] for r in runs) / needed
            row["skipped_per_teacher"] = {
                n: sum(r["per_teacher_skipped"][n][0] for r in runs) / max(1, sum(r["per_teacher_skipped"][n][1] for r in runs))
                for n in runs[0]["per_teacher_skipped"]}
            row["saved_whole_run"] = 1 - row["teacher_outputs"] / row["asked_unfiltered"]
        rows[method] = row
    return rows


def add_gaps(table):
    ce = table.rows.get("ce", {}).get("mean")
    for row in table.rows.values():
        for what, acc in (("fm", table.members.get("fm")), ("best", table.members.get(table.best))):
            if ce is not None and acc is not None and acc > ce:
                row[f"gap_recovered_{what}"] = (row["mean"] - ce) / (acc - ce)


def render(table, specs):
    md = [f"Teachers: " + ", ".join(f"{n} {100 * a:.2f}%" for n, a in table.members.items())
          + f"; best: {table.best}. Gap recovered = (acc − acc_ce) / (acc_teacher − acc_ce) (— when "
          "the teacher is not above ce: no gap to recover).\n",
          "| method | teachers | test acc (%) | gap vs fm | gap vs best | skipped (filtered epochs) "
          "| teacher outputs / run | wall (s) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        method, label, who = spec[:3]
        row = table.rows.get(method)
        if not row:
            md.append(f"| {label} | {who} | not run | | | | | | 0/{len(SEEDS)} |")
            continue
        skip = (f"{pct(row['skipped_filtered_epochs'])} ({pct(row['saved_whole_run'])} of the run)"
                if "skipped_filtered_epochs" in row else "—")
        outputs = (f"{row['teacher_outputs'] / 1000:.0f}k (replay)" if row["replay"] and "skipped_filtered_epochs" in row
                   else "replay of the record" if row["replay"] else
                   f"{row['teacher_outputs'] / 1000:.0f}k" if row["teacher_outputs"] else "—")
        md.append(f"| {label} | {who} | {table.text(method)} | {pct(row.get('gap_recovered_fm'), 0)} | "
                  f"{pct(row.get('gap_recovered_best'), 0)} | {skip} | {outputs} | "
                  f"{row['wall_seconds']:.0f} | {row['seeds_done']}/{len(SEEDS)} |")
    for method in ("dd-filter", "dd-three-filter"):
        row = table.rows.get(method)
        if row and "skipped_per_teacher" in row:
            md.append("")
            md.append(f"{row['label']}: outputs skipped per teacher (filtered epochs): " + ", ".join(
                f"{n} {pct(v)}" for n, v in row["skipped_per_teacher"].items()) + ".")
    md.append("")
    return md


def claims(t, dd, dd_fm, filtered, baselines):
    """The three claims, each (claim, answer, sentence), from table t's numbers."""
    out, have = [], lambda *ms: all(m in t.rows for m in ms)  # noqa: E731
    if dd_fm and have(dd, dd_fm):
        d = t.mean(dd) - t.mean(dd_fm)
        out.append(("adding the complementary teacher improves DiverseDistill over foundation-only",
                    d > 0, f"{t.rows[dd]['label']} {t.text(dd)} vs {t.rows[dd_fm]['label']} {t.text(dd_fm)} "
                    f"({100 * d:+.2f} pt, " + ("more than one std)" if t.better(dd, dd_fm) else "within one std)")))
    others = [b for b in baselines if b in t.rows]
    if dd in t.rows and others:
        beaten = [b for b in others if t.better(dd, b)]
        lost = [b for b in others if t.better(b, dd)]
        best = max(others, key=t.mean)
        out.append(("DiverseDistill beats every baseline by more than one std", len(beaten) == len(others),
                    f"{t.rows[dd]['label']} {t.text(dd)}; best baseline {t.rows[best]['label']} {t.text(best)} "
                    f"({100 * (t.mean(dd) - t.mean(best)):+.2f} pt); beaten by more than one std: "
                    f"{', '.join(t.rows[b]['label'] for b in beaten) or 'none'}; loses by more than one "
                    f"std to: {', '.join(t.rows[b]['label'] for b in lost) or 'none'}"))
    if have(dd, filtered) and "skipped_filtered_epochs" in t.rows[filtered]:
        f = t.rows[filtered]
        drop = t.mean(dd) - t.mean(filtered)
        out.append(("filtering skips ≥ 30% of teacher outputs within 0.3 points of unfiltered",
                    f["skipped_filtered_epochs"] >= 0.30 and drop <= 0.003,
                    f"skipped {pct(f['skipped_filtered_epochs'])} of the (example, teacher) outputs of its "
                    f"filtered epochs; over the whole run (warm-up included, --cache off) the teachers "
                    f"computed {f['teacher_outputs'] / 1000:.0f}k of {f['asked_unfiltered'] / 1000:.0f}k "
                    f"({pct(1 - f['saved_whole_run'])}); per teacher " + ", ".join(
                        f"{n} {pct(v)}" for n, v in f["skipped_per_teacher"].items())
                    + f"; filtered {t.text(filtered)} vs unfiltered {t.text(dd)} ({-100 * drop:+.2f} pt)"))
    return out


out = {"chosen": chosen, "teachers": teachers, "recipes": {}, "prefill": {}, "tables": {},
       "claims": {}, "tuning": {}, "ablation": {}}
md = ["# DiverseDistill on Fashion-MNIST: the results tables\n"]
smoke = " **SMOKE RUN: shrunken data, epochs and grids; these numbers mean nothing.**" if chosen.get("smoke") else ""
md.append("Produced by `bench/quality.sh` (`make bench-quality`); machine-readable copy in "
          f"`quality.json`.{smoke} Test accuracy in %, mean ± sample std over seeds {', '.join(SEEDS)}. "
          f"Every student uses AdamW, batch {chosen['batch']}, the {chosen['schedule']} schedule, and per "
          "table the lr and epochs that were best for `ce` on the holdout (below); every method of a "
          f"table uses that recipe and the same label seed ({chosen['label_seed']}) in the few-label regime "
          "(10% of the training labels visible; teachers answer for all training images). "
          "Table runs use `--holdout 0`; the test set is read only for these tables.\n")
md.append("Teacher outputs: each committee was asked once, by a one-epoch prefill run with `--record`; "
          "every run marked *replay* trained from that record (`student-trainer replay`, bit-exact with "
          "`train`), so its teacher outputs cost nothing at run time. Filtered table runs replay the record "
          "with `--dd-filter` (the router's choice drops the recorded outputs it does not keep): their "
          "*teacher outputs / run* is what live teachers with `--cache off` would compute, every example x "
          "teacher x epoch less the skipped pairs; the tuning's theta runs ran live with `--cache off`, where "
          "the same number is the rows the teachers' own counters served. Replayed outputs are the recorded "
          "ones, so a filtered replay is not bit-exact with a live filtered run (live teachers compute the "
          "kept rows in smaller batches, which moves their outputs by an ulp). *wall* = mean wall seconds of one run, two runs at a "
          "time on the 2-core machine that also served the teachers.\n")

md.append("## Committee\n")
md.append("| teacher | role | view | model | fit | test acc | fit time |")
md.append("|---|---|---|---|---|---|---|")
for name, t in teachers.items():
    fit = re.sub(r"--view \S+ --model \S+ ?", "", t["fit_args"])
    md.append(f"| {name} | {t['role']} | {t['view']} | `{t['model']}` | `{fit}` | {pct(t['test_accuracy'], 2)} | "
              f"{str(t['fit_seconds']) + ' s' if t['fit_seconds'] else '(existing)'} |")
md.append("")
md.append("| prefill (committee asked once) | teacher outputs computed | wall (s) |")
md.append("|---|---|---|")
for name in sorted(f[len("prefill-"):-6] for f in os.listdir(RUNS) if f.startswith("prefill-") and f.endswith(".jsonl")):
    r = load_run("prefill-" + name, 1)
    if r:
        out["prefill"][name] = {"received": r["received"], "wall_seconds": r.get("wall_seconds")}
        md.append(f"| {name} | " + ", ".join(f"{n} {v}" for n, v in r["received"].items())
                  + f" | {r.get('wall_seconds', 0):.0f} |")
md.append("")

md.append("## Student recipes (ce on the holdout)\n")
md.append(f"`ce`, seed {chosen['tune_seed']}, `--holdout {chosen['tune_holdout']}`, cosine; valid accuracy (%) "
          f"over lr ∈ {{{chosen['lr_grid']}}} × epochs ∈ {{{chosen['epoch_grid']}}}; the best is the "
          "table's recipe (**bold**; on the grid's largest epochs it is marked *edge*: more epochs "
          "might still help).\n")
lrs, eps = chosen["lr_grid"].split(), chosen["epoch_grid"].split()
md.append("| table | " + " | ".join(f"lr {lr}, {e} ep" for e in eps for lr in lrs) + " | chosen |")
md.append("|---|" + "---|" * (len(lrs) * len(eps) + 1))
for tab, labels in TABLES:
    key = f"{tab}-{labels}"
    cells, grid = [], {}
    for e in eps:
        for lr in lrs:
            r = load_run(f"tune-ce-{key}-e{e}-lr{lr}", int(e))
            v = r["valid_accuracy"] if r else None
            grid[f"e{e}-lr{lr}"] = v
            best = key in RECIPES and int(e) == RECIPES[key]["epochs"] and float(lr) == RECIPES[key]["lr"]
            cell = "—" if v is None else f"{100 * v:.2f}"
            cells.append(f"**{cell}**" if best else cell)
    rec = RECIPES.get(key)
    edge = rec and str(rec["epochs"]) == eps[-1] and len(eps) > 1
    out["recipes"][key] = {"grid_valid": grid, "chosen": rec, "at_grid_edge": bool(edge)}
    md.append(f"| {key} | " + " | ".join(cells) + f" | {rec['epochs']} ep, lr {rec['lr']}"
              + (" (*edge*)" if edge else "") + " |" if rec else " | — |")
md.append("")

all_claims = []
for tab, labels in TABLES:
    key = f"{tab}-{labels}"
    epochs = RECIPES[key]["epochs"]
    rows = make_rows([(m, l, w, f"{key}-{m}") for m, l, w in METHODS], key, epochs)
    table = Table(key, rows, ["fm", COMP[tab]])
    add_gaps(table)
    title = {"full": "full labels", "few": "few labels (10%)"}[labels]
    md.append(f"## {tab} ({VIEW[tab]}, student `{STUDENT[tab]}`, comp = {COMP[tab]}), {title}\n")
    md.append(f"Recipe: {epochs} epochs, lr {RECIPES[key]['lr']}, cosine.\n")
    md += render(table, METHODS)
    c = claims(table, "dd-both", "dd-fm", "dd-filter", BASELINES)
    out["tables"][key] = {"view": VIEW[tab], "student": STUDENT[tab], "labels": labels, "recipe": RECIPES[key],
                          "teachers": table.members, "best_teacher": table.best, "rows": rows}
    out["claims"][key] = [{"claim": a, "answer": b, "numbers": s} for a, b, s in c]
    all_claims.append((key, c))

if chosen.get("three") and "A14-few" in RECIPES:
    epochs = RECIPES["A14-few"]["epochs"]
    rows = make_rows([(m, l, w, stem) for m, l, w, stem in THREE], "A14-few3", epochs)
    table = Table("A14-few-three", rows, ["fm", "vit", "comp14"])
    add_gaps(table)
    md.append("## Three teachers: fm + vit + comp14, A14 few labels (10%)\n")
    md.append("The second foundation teacher (the ViT) joins; filtering chooses among three teachers. "
              "Rows ce, kd(fm), kd(comp) and DiverseDistill (fm+comp) are the A14 few-label table's runs. "
              "Same recipe and hyper-parameters as that table (nothing re-tuned).\n")
    md += render(table, THREE)
    c = claims(table, "dd-three", "dd-both", "dd-three-filter", THREE_BASELINES)
    # claim 1 here: the second foundation teacher, not the complementary one
    if c and c[0][0].startswith("adding the complementary"):
        c[0] = ("adding the second foundation teacher (vit) improves DiverseDistill over fm+comp",) + c[0][1:]
    out["tables"]["A14-few-three"] = {"teachers": table.members, "best_teacher": table.best, "rows": rows}
    out["claims"]["A14-few-three"] = [{"claim": a, "answer": b, "numbers": s} for a, b, s in c]
    all_claims.append(("A14-few-three", c))

md.append("## The three claims, per table\n")
md.append("Answered from the numbers above; \"by more than one std\" = the difference of means exceeds the "
          "larger of the two stds.\n")
for key, c in all_claims:
    md.append(f"**{key}**\n")
    if not c:
        md.append("(not enough rows yet)\n")
    for number, (claim, answer, sentence) in enumerate(c, 1):
        md.append(f"{number}. {claim}: **{'yes' if answer else 'no'}**: {sentence}.")
    md.append("")

md.append("## Hyper-parameters and how they were chosen\n")
md.append(f"On ONE regime — {chosen['tune_table']} few labels with its recipe, seed {chosen['tune_seed']}, "
          f"`--holdout {chosen['tune_holdout']}` — by `valid_accuracy` only; the test set was not looked at. "
          f"Stage 1: kd-weight ∈ {{{chosen['kd_grid_w']}}} × T ∈ {{{chosen['kd_grid_t']}}} on kd(comp); the "
          "winner is used by every distillation method. Stage 2: the DiverseDistill router target ∈ "
          f"{{{chosen['routers']}}} (fm+comp). Stage 2b: committee-answer weight λ_ans ∈ "
          f"{{{chosen['dd_answers']}}} × interactive probes off/on, by the mean valid accuracy over holdout "
          f"seeds {chosen['tune_variant_seeds']}. Stage 3: filter θ ∈ {{{chosen['thetas']}}} with `--cache off`: "
          "the largest θ within 0.3 points of the unfiltered winner (else the best). Other DiverseDistill "
          "settings are the trainer's defaults (feature auto = the CNN's tokens, λ_α = 1, τ = 1, "
          "alignment off, exploration 0.05, warm-up 1 epoch); fitnet weight 1.\n")
md.append(f"**Chosen:** kd-weight {chosen['kd_weight']}, T {chosen['temperature']}, router "
          f"`{chosen['dd_router']}`, variant `{chosen['dd_variant']}` (`{chosen['dd_extra'] or 'no extra options'}`), "
          f"θ = {chosen['dd_filter']}.\n")
md.append("| tuning run | valid acc (%) | skipped |")
md.append("|---|---|---|")
for f in sorted(os.listdir(RUNS)):
    if f.startswith("tune-") and not f.startswith("tune-ce-") and f.endswith(".jsonl"):
        r = load_run(f[:-6])
        if r:
            skip = r["filter_skipped"] / r["filter_needed"] if r["filter_needed"] else None
            out["tuning"][f[:-6]] = {"valid_accuracy": r["valid_accuracy"], "skipped": skip}
            md.append(f"| {f[:-6]} | {100 * r['valid_accuracy']:.2f} | {pct(skip)} |")
md.append("")

abl = sorted(f[:-6] for f in os.listdir(RUNS) if f.startswith("abl-") and f.endswith(".jsonl"))
groups = {}
for name in abl:
    r = load_run(name)
    if r:
        out["ablation"][name] = {"test_accuracy": r["test_accuracy"], "wall_seconds": r.get("wall_seconds")}
        groups.setdefault(re.sub(r"-s[0-9]+$", "", name), []).append((name[name.rindex("-s") + 2:], r))
if groups:
    ref = out["tables"].get("A14-few", {}).get("rows", {}).get("dd-both")
    md.append("## Ablation (A14 few labels, test accuracy; chooses nothing)\n")
    md.append("Each row is the chosen DiverseDistill (fm+comp) with one thing changed. Reference: the A14 "
              "few-label table's DiverseDistill (fm+comp) row"
              + (f", {100 * ref['mean']:.2f} ± {100 * ref['std']:.2f}" if ref else "") + ".\n")
    md.append("| variant | per seed | mean ± std |")
    md.append("|---|---|---|")
    for g, runs in groups.items():
        accs = [r["test_accuracy"] for _, r in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        md.append(f"| {g[len('abl-A14-few-'):]} | " + ", ".join(f"s{s}: {100 * r['test_accuracy']:.2f}" for s, r in runs)
                  + f" | {100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} |")
    md.append("")

phases = []
if os.path.exists(os.path.join(work, "phases.jsonl")):
    phases = [json.loads(line) for line in open(os.path.join(work, "phases.jsonl")) if line.strip()]
if phases:
    md.append("## Wall time per phase\n")
    md.append("Every invocation appends its phases (a rerun skips finished runs, so its phases are short).\n")
    md.append("| phase | seconds |")
    md.append("|---|---|")
    for p in phases:
        md.append(f"| {p['phase']} | {p['seconds']} |")
    md.append("")
out["phases"] = phases
if final_seconds is not None:
    out["wall_seconds_total"] = final_seconds
    out["runs_trained"] = trained
    md.append(f"Wall time of the last invocation of the script: {final_seconds} s ({final_seconds / 60:.1f} min), "
              f"{trained} runs trained by it (finished runs are skipped).\n")
else:
    md.append("*(partial: the script was still running when this was written)*\n")

os.makedirs(results, exist_ok=True)
open(os.path.join(results, "quality.md"), "w").write("\n".join(md))
json.dump(out, open(os.path.join(results, "quality.json"), "w"), indent=1)
print(f"wrote {results}/quality.md and quality.json")
