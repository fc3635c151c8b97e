#!/usr/bin/env bash
# bench/movielens/quality.sh: the MovieLens section of `make bench-quality` (issue 16; also
# `make bench-movielens`).
#
#   quality.sh [--seeds "1 2 3"] [--methods "ce kd-fm ..."] [--dir DIR] [--out PREFIX]
#
#   1. the dataset folder (prepare.sh; MOVIELENS_DIR, default build/data/movielens);
#   2. fits each teacher over a small grid of weight decay x epochs and keeps the one with
#      the lowest RMSE on the `valid` split (each user's second-to-last rating, the tuning
#      holdout; the test split is never used to choose anything): fm, a token transformer
#      on `text`, and comp, an embedding recommender on `pair_genres`;
#   3. serves both on ephemeral loopback ports;
#   4. tunes on `valid`, seed 1: the student's lr x epochs x weight decay by ce (cosine
#      schedule); each distilling method's --kd-weight; DiverseDistill's router
#      temperature --dd-tau (the learnability target softmax(-SE/tau) over squared errors
#      in rating units); the filter's --dd-filter theta (the largest whose valid RMSE is
#      within NOISE of unfiltered);
#   5. trains every method at every seed with its chosen settings and records the test
#      RMSE overall and on the long tail, the valid RMSE, the wall time, the router weights
#      and the teachers' filter counters, one JSON line per run in DIR/runs.jsonl;
#   6. bench/movielens/report.py writes the tables and answers the paper's five claims from
#      the numbers, to PREFIX.md and PREFIX.json (default DIR/movielens).
# Methods: ce, kd-fm, kd-comp, avg-kd, ca-mkd, fitnet-fm (fitnet from fm, with its kd
# term), dd-fm (diversedistill, fm only), dd (fm+comp), dd-filter (fm+comp, --dd-filter,
# --cache off: every epoch asks the teachers, so the filter has outputs to skip), and
# kd-fm-transfer, dd-transfer: kd-fm and dd with the unlabelled `transfer` split added
# (--transfer-split transfer: 20,000 unrated pairs only the teachers annotate), at kd-fm's
# and dd's chosen settings.
# A fit or run whose checkpoint and result line exist is not done again.
# Environment: BIN, PYTHON, MOVIELENS_DIR, and the grids (space-separated):
#   FM_GRID "WD:EPOCHS ..." (default "0.1:3 0.1:5 1:3 1:5"), COMP_GRID (default
#   "0.5:5 0.5:8 1:5 1:8"), STUDENT_GRID "LR:EPOCHS:WD ...", KD_WEIGHTS ("0.2 0.5 0.9"),
#   DD_TAUS ("1 0.1 0.02"), DD_THETAS ("0.3 0.4 0.5"), NOISE (0.003, valid RMSE).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=${BIN:-$root/build/bin}
python=${PYTHON:-/usr/bin/python3}
data=${MOVIELENS_DIR:-build/data/movielens}
seeds="1 2 3"
methods="ce kd-fm kd-comp avg-kd ca-mkd fitnet-fm dd-fm dd dd-filter kd-fm-transfer dd-transfer"
dir=runs/quality-movielens
out=
while [ $# -gt 0 ]; do
    case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quality.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
out=${out:-$dir/movielens}
for method in $methods; do
    case $method in
    ce | kd-fm | kd-comp | avg-kd | ca-mkd | fitnet-fm | dd-fm | dd | dd-filter) ;;
    kd-fm-transfer | dd-transfer) ;;
    *) echo "quality.sh: --methods: unknown method $method" >&2; exit 2 ;;
    esac
done
FM_GRID=${FM_GRID:-"0.1:3 0.1:5 1:3 1:5"}
COMP_GRID=${COMP_GRID:-"0.5:5 0.5:8 1:5 1:8"}
STUDENT_GRID=${STUDENT_GRID:-"0.003:4:0.01 0.003:8:0.01 0.01:4:0.01 0.01:8:0.01 0.003:4:0.5 0.003:8:0.5 0.01:4:0.5 0.01:8:0.5"}
KD_WEIGHTS=${KD_WEIGHTS:-"0.2 0.5 0.9"}
DD_TAUS=${DD_TAUS:-"1 0.1 0.02"}
DD_THETAS=${DD_THETAS:-"0.3 0.4 0.5"}
NOISE=${NOISE:-0.003}
export OPENBLAS_NUM_THREADS=1

say() { printf '\n== quality-movielens: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
die() {
    echo "quality-movielens: FAILED: $*" >&2
    exit 1
}
server_pids=()
stop_all() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${server_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${server_pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t_start=$(now)
BIN=$bin PYTHON=$python bench/movielens/prepare.sh "$data" >&2
json() { "$python" -c 'import json, sys; print(eval(sys.argv[2], {}, json.load(open(sys.argv[1]))))' "$@"; }
cards() { json "$data/dataset.json" "'x'.join(map(str, views['$1']['cardinality']))"; }
long_tail=$(json "$data/movielens.json" "long_tail_test")
FM_SPEC="tok:len=$(json "$data/movielens.json" text_len),vocab=$(json "$data/dataset.json" "views['text']['vocab']"),dim=48,depth=2,heads=4,mlp=96,out=1"
COMP_SPEC="emb:cards=$(cards pair_genres),dim=32,mlp=128-64,out=1"
STUDENT_SPEC="emb:cards=$(cards pair),dim=4,mlp=16,out=1"
mkdir -p "$dir"
results=$dir/runs.jsonl
teachers=$dir/teachers.jsonl
touch "$results" "$teachers"
rmse() { "$bin/student-trainer" eval --model "$1" --data "$data" "${@:2}" | sed -n 's/.*rmse=\([0-9.]*\).*/\1/p'; }
# test_scores FILE: "RMSE MAE" of a checkpoint on the test split, from one evaluation.
test_scores() { "$bin/student-trainer" eval --model "$1" --data "$data" | sed -n 's/.*rmse=\([0-9.]*\) mae=\([0-9.]*\).*/\1 \2/p'; }
params() { # a checkpoint's parameters: its F32 tensors' bytes / 4
    "$bin/teacher-server" inspect "$1" | awk '/^tensors:/ { print $3 / 4 }'
}

# ------------------------------------------------------------------ teachers (tuned on valid)
# fit_one NAME WD EPOCHS: fits one grid point (unless done) and appends its line.
fit_one() {
    local name=$1 wd=$2 epochs=$3 tag="$1-wd$2-e$3" args t
    local file=$dir/teacher-$tag.safetensors
    if [ -s "$file" ] && grep -q "\"tag\": \"$tag\"" "$teachers"; then return; fi
    if [ "$name" = fm ]; then args=(--view text --model "$FM_SPEC" --lr 2e-3)
    else args=(--view pair_genres --model "$COMP_SPEC" --lr 3e-3); fi
    t=$(now)
    "$bin/teacher-server" fit --data "$data" "${args[@]}" --epochs "$epochs" --weight-decay "$wd" \
        --out "$file" 2>"$dir/teacher-$tag.fit.log" || die "fitting $tag failed (log $dir/teacher-$tag.fit.log)"
    printf '{"tag": "%s", "name": "%s", "view": "%s", "spec": "%s", "weight_decay": %s, "epochs": %s, "seconds": %s, "parameters": %s, "valid_rmse": %s, "test_rmse": %s, "test_mae": %s, "long_tail_rmse": %s}\n' \
        "$tag" "$name" "${args[1]}" "${args[3]}" "$wd" "$epochs" "$(since "$t")" "$(params "$file")" \
        "$(rmse "$file" --split valid)" $(test_scores "$file") \
        "$(rmse "$file" --max-test "$long_tail")" >>"$teachers"
    echo "quality-movielens: teacher $tag: $(tail -n 1 "$teachers")" >&2
}
say "fitting the teachers over their grids (fm: $FM_GRID; comp: $COMP_GRID; WD:EPOCHS)"
t0=$(now)
# The fm grid two at a time (one core each); comp's fits take seconds.
jobs_running=0
for point in $FM_GRID; do
    fit_one fm "${point%%:*}" "${point##*:}" &
    jobs_running=$((jobs_running + 1))
    if [ $jobs_running -eq 2 ]; then wait -n || die "a teacher fit failed"; jobs_running=$((jobs_running - 1)); fi
done
for point in $COMP_GRID; do fit_one comp "${point%%:*}" "${point##*:}"; done
while [ $jobs_running -gt 0 ]; do wait -n || die "a teacher fit failed"; jobs_running=$((jobs_running - 1)); done
fit_seconds=$(since "$t0")
for name in fm comp; do
    best=$("$python" -c 'import json, sys
fits = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["name"] == sys.argv[2]]
print(min(fits, key=lambda f: f["valid_rmse"])["tag"])' "$teachers" "$name")
    cp "$dir/teacher-$best.safetensors" "$dir/$name.safetensors"
    echo "$best" >"$dir/$name.chosen"
    say "teacher $name: $best (lowest valid RMSE of its grid)"
done
declare -A endpoint
for name in fm comp; do
    "$bin/teacher-server" serve --model "$dir/$name.safetensors" --name "$name" --data "$data" \
        --bind tcp://127.0.0.1:0 --http off >"$dir/$name.serve.log" 2>&1 &
    server_pids+=($!)
    for _ in $(seq 1200); do
        kill -0 "$!" 2>/dev/null || die "teacher $name exited (log $dir/$name.serve.log)"
        endpoint[$name]=$(sed -n "s/.*serving '.*' (.*) on \(tcp:[^,]*\),.*/\1/p" "$dir/$name.serve.log")
        [ -z "${endpoint[$name]}" ] || break
        sleep 0.1
    done
    [ -n "${endpoint[$name]}" ] || die "teacher $name not serving after 120 s"
done

# ------------------------------------------------------------------ students
# The trainer's flags of a method (teachers included); TAU and THETA are DiverseDistill's.
TAU=1
THETA=0.3
method_args() {
    local fm=(--teacher "fm=${endpoint[fm]}") comp=(--teacher "comp=${endpoint[comp]}")
    case $1 in
    ce) echo --method ce ;;
    kd-fm) echo --method kd "${fm[@]}" ;;
    kd-comp) echo --method kd "${comp[@]}" ;;
    avg-kd | ca-mkd) echo --method "$1" "${fm[@]}" "${comp[@]}" ;;
    fitnet-fm) echo --method fitnet "${fm[@]}" ;;
    dd-fm) echo --method diversedistill --dd-tau "$TAU" "${fm[@]}" ;;
    dd) echo --method diversedistill --dd-tau "$TAU" "${fm[@]}" "${comp[@]}" ;;
    dd-filter) echo --method diversedistill --dd-tau "$TAU" --dd-filter "$THETA" --cache off "${fm[@]}" "${comp[@]}" ;;
    kd-fm-transfer) echo --transfer-split transfer "$(method_args kd-fm)" ;;
    dd-transfer) echo --transfer-split transfer "$(method_args dd)" ;;
    esac
}
# run TAG METHOD SEED KD_WEIGHT: trains one student with LR, EPOCHS, WD (and TAU, THETA),
# appends its result line.
run() {
    local tag=$1 method=$2 seed=$3 weight=$4 t
    local file=$dir/$tag.safetensors
    if [ -s "$file" ] && grep -q "\"tag\": \"$tag\"" "$results"; then return; fi
    t=$(now)
    # A generous greeting/request deadline (the default is 10 s): once, with a sanitizer suite
    # sharing the 2 cores, a trainer could not greet the teacher within 10 s and the section died.
    # shellcheck disable=SC2046 # method_args is a list of flags
    "$bin/student-trainer" train --data "$data" --view pair --model "$STUDENT_SPEC" \
        $(method_args "$method") --kd-weight "$weight" --epochs "$EPOCHS" --lr "$LR" \
        --weight-decay "$WD" --schedule cosine --seed "$seed" --teacher-timeout-ms 60000 \
        --http off --out "$file" --metrics "$dir/$tag.jsonl" >"$dir/$tag.out" 2>"$dir/$tag.log" ||
        die "training $tag failed (log $dir/$tag.log)"
    local seconds theta=0
    seconds=$(since "$t")
    [ "$method" = dd-filter ] && theta=$THETA
    "$python" - "$tag" "$method" "$seed" "$LR" "$EPOCHS" "$WD" "$weight" "$TAU" "$theta" "$seconds" \
        $(test_scores "$file") "$(rmse "$file" --max-test "$long_tail")" \
        "$(rmse "$file" --split valid)" "$dir/$tag.jsonl" >>"$results" <<'EOF'
import json, sys
(tag, method, seed, lr, epochs, wd, weight, tau, theta, seconds, test, test_mae, tail, valid,
 metrics) = sys.argv[1:]
lines = [json.loads(line) for line in open(metrics) if '"epoch"' in line]  # not the config line
counters = [t for line in lines for t in line["teachers"].values()]
last = lines[-1]["teachers"] if lines else {}
print(json.dumps({"tag": tag, "method": method, "seed": int(seed), "lr": float(lr),
                  "epochs": int(epochs), "weight_decay": float(wd), "kd_weight": float(weight),
                  "tau": float(tau), "theta": float(theta), "seconds": float(seconds),
                  "test_rmse": float(test), "test_mae": float(test_mae),
                  "long_tail_rmse": float(tail),
                  "valid_rmse": float(valid),
                  "router_weight": {name: t["router_weight"] for name, t in last.items()
                                    if "router_weight" in t},
                  "filter_needed": sum(t["filter_needed"] for t in counters),
                  "filter_skipped": sum(t["filter_skipped"] for t in counters)}))
EOF
    echo "quality-movielens: $tag: $(tail -n 1 "$results")" >&2
}
best() { # PREFIX FIELD...: those fields of the runs.jsonl line starting with PREFIX with the lowest valid RMSE
    "$python" -c 'import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["tag"].startswith(sys.argv[2])]
b = min(runs, key=lambda r: r["valid_rmse"])
print(*(b[f] for f in sys.argv[3:]))' "$results" "$@"
}
valid_of() { json_line "$1" valid_rmse; }
json_line() { # TAG FIELD
    "$python" -c 'import json, sys
print(next(json.loads(l)[sys.argv[3]] for l in open(sys.argv[1]) if json.loads(l)["tag"] == sys.argv[2]))' "$results" "$@"
}

# ------------------------------------------------------------------ tuning (valid split, seed 1)
say "tuning the student on the valid split (ce; LR:EPOCHS:WD $STUDENT_GRID)"
for point in $STUDENT_GRID; do
    IFS=: read -r LR EPOCHS WD <<<"$point"
    run "tune-ce-lr$LR-e$EPOCHS-wd$WD" ce 1 0.5
done
read -r LR EPOCHS WD <<<"$(best tune-ce- lr epochs weight_decay)"
say "student: lr $LR, $EPOCHS epochs, weight decay $WD, cosine (best ce on valid)"
declare -A weight
dd_family() { [[ $1 == dd || $1 == dd-fm || $1 == dd-filter ]]; }
for method in $methods; do
    [ "$method" = ce ] && { weight[$method]=0.5; continue; }
    [ "$method" = dd-filter ] && continue # dd's weight, below
    [[ $method == *-transfer ]] && continue # the weight of the method without the split
    for w in $KD_WEIGHTS; do run "tune-$method-w$w" "$method" 1 "$w"; done
    read -r weight[$method] <<<"$(best "tune-$method-w" kd_weight)"
    say "$method: --kd-weight ${weight[$method]} (best on valid)"
done
if [[ " $methods " == *" dd "* || " $methods " == *" dd-fm "* || " $methods " == *" dd-filter "* ]]; then
    # The router temperature on dd (fm+comp) at its weight; tau 1 is the run above.
    [ -n "${weight[dd]:-}" ] || { for w in $KD_WEIGHTS; do run "tune-dd-w$w" dd 1 "$w"; done
        read -r weight[dd] <<<"$(best "tune-dd-w" kd_weight)"; }
    for tau in $DD_TAUS; do
        TAU=$tau
        if [ "$tau" = 1 ]; then continue; fi
        run "tune-dd-w${weight[dd]}-tau$tau" dd 1 "${weight[dd]}"
    done
    best_tau=1 best_valid=$(valid_of "tune-dd-w${weight[dd]}")
    for tau in $DD_TAUS; do
        [ "$tau" = 1 ] && continue
        v=$(valid_of "tune-dd-w${weight[dd]}-tau$tau")
        if (($(echo "$v < $best_valid" | bc -l))); then best_valid=$v; best_tau=$tau; fi
    done
    TAU=$best_tau
    unfiltered=$best_valid
    say "diversedistill: --dd-tau $TAU (best on valid, $unfiltered)"
    weight[dd-filter]=${weight[dd]}
    # Filtering: every theta at the chosen tau, and the smallest at tau 1 (the ablation: a flat
    # router leaves no teacher below theta to skip); the largest theta within NOISE of
    # unfiltered at the chosen tau wins.  With two teachers the top one is always asked, so
    # theta 0.5 asks only it (plus --dd-explore's share).
    for THETA in $DD_THETAS; do run "tune-ddf-tau$TAU-th$THETA" dd-filter 1 "${weight[dd]}"; done
    THETA=$(echo "$DD_THETAS" | tr ' ' '\n' | sort -g | head -n 1)
    TAU=1 run "tune-ddf-tau1-th$THETA" dd-filter 1 "${weight[dd]}"
    chosen_theta=
    for th in $(echo "$DD_THETAS" | tr ' ' '\n' | sort -gr); do
        v=$(valid_of "tune-ddf-tau$best_tau-th$th")
        if (($(echo "$v <= $unfiltered + $NOISE" | bc -l))); then chosen_theta=$th; break; fi
    done
    [ -n "$chosen_theta" ] || chosen_theta=$(echo "$DD_THETAS" | tr ' ' '\n' | sort -g | head -n 1)
    THETA=$chosen_theta
    TAU=$best_tau
    say "filter: --dd-filter $THETA (the largest within $NOISE of unfiltered on valid)"
fi
if [[ " $methods " == *" dd-fm "* ]]; then weight[dd-fm]=${weight[dd-fm]:-${weight[dd]}}; fi
for method in kd-fm dd; do
    if [[ " $methods " == *" $method-transfer "* ]]; then
        [ -n "${weight[$method]:-}" ] || die "--methods: $method-transfer needs $method too (its settings)"
        weight[$method-transfer]=${weight[$method]}
    fi
done

# ------------------------------------------------------------------ the table
say "training every method at seeds $seeds"
for method in $methods; do
    for seed in $seeds; do run "final-$method-s$seed" "$method" "$seed" "${weight[$method]}"; done
done
total_seconds=$(since "$t_start")
cat >"$dir/chosen.json" <<EOF
{"student": {"spec": "$STUDENT_SPEC", "parameters": $(params "$dir/final-ce-s1.safetensors" 2>/dev/null || echo 0),
  "lr": $LR, "epochs": $EPOCHS, "weight_decay": $WD, "schedule": "cosine"},
 "fm": "$(cat "$dir/fm.chosen")", "comp": "$(cat "$dir/comp.chosen")",
 "dd_tau": $TAU, "dd_filter": $THETA, "noise": $NOISE, "seeds": "$seeds",
 "fit_seconds": $fit_seconds, "total_seconds": $total_seconds}
EOF
# Every invocation's wall time: a rerun that trains only what is missing adds a line.
printf '{"date": "%s", "fit_seconds": %s, "total_seconds": %s, "methods": "%s", "seeds": "%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$fit_seconds" "$total_seconds" "$methods" "$seeds" >>"$dir/invocations.jsonl"
"$python" bench/movielens/report.py --dir "$dir" --out "$out"
