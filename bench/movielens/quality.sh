#!/usr/bin/env bash
# bench/movielens/quality.sh: the MovieLens table of issue 16 (make bench-movielens).
#
#   quality.sh [--seeds "1 2 3"] [--methods "ce kd-fm ..."] [--dir DIR] [--out PREFIX]
#
#   1. the dataset folder (prepare.sh; MOVIELENS_DIR, default build/data/movielens);
#   2. fits fm (tok: on text) and comp (emb: on pair_genres) unless DIR holds them;
#   3. serves both on ephemeral loopback ports;
#   4. tunes on the holdout only (the `valid` split, each user's second-to-last
#      rating; never the test split): the student's lr x epochs by ce, then each
#      distilling method's --kd-weight (0.5 or 0.9), all at seed 1;
#   5. trains every method at every seed with its chosen settings and records the
#      test RMSE overall and on the long tail, the valid RMSE, the wall time and the
#      teachers' filter counters, one JSON line per run in DIR/runs.jsonl;
#   6. bench/movielens/report.py writes the table (mean +- std over seeds, gap
#      recovered) to PREFIX.md and PREFIX.json (default DIR/movielens).
# Methods: ce, kd-fm, kd-comp, avg-kd, ca-mkd, fitnet-fm (fitnet from fm, with its kd
# term), dd-fm (diversedistill, fm only), dd (fm+comp), dd-filter (fm+comp, --dd-filter
# 0.3, --cache off: every epoch asks the teachers, so the filter has outputs to skip).
# A run whose checkpoint and result line exist is not trained again.
# Environment: BIN, PYTHON, MOVIELENS_DIR, QUALITY_FM_EPOCHS (4), QUALITY_COMP_EPOCHS (6).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=${BIN:-$root/build/bin}
python=${PYTHON:-/usr/bin/python3}
data=${MOVIELENS_DIR:-build/data/movielens}
seeds="1 2 3"
methods="ce kd-fm kd-comp avg-kd ca-mkd fitnet-fm dd-fm dd dd-filter"
dir=runs/quality-movielens
out=
while [ $# -gt 0 ]; do
    case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quality.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
out=${out:-$dir/movielens}
for method in $methods; do
    case $method in
    ce | kd-fm | kd-comp | avg-kd | ca-mkd | fitnet-fm | dd-fm | dd | dd-filter) ;;
    *) echo "quality.sh: --methods: unknown method $method" >&2; exit 2 ;;
    esac
done
FM_EPOCHS=${QUALITY_FM_EPOCHS:-4}
COMP_EPOCHS=${QUALITY_COMP_EPOCHS:-6}
export OPENBLAS_NUM_THREADS=1

say() { printf '\n== quality-movielens: %s\n' "$*" >&2; }
now() { date +%s.%N; }
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

BIN=$bin PYTHON=$python bench/movielens/prepare.sh "$data" >&2
json() { "$python" -c 'import json, sys; print(eval(sys.argv[2], {}, json.load(open(sys.argv[1]))))' "$@"; }
cards() { json "$data/dataset.json" "'x'.join(map(str, views['$1']['cardinality']))"; }
long_tail=$(json "$data/movielens.json" "long_tail_test")
FM_SPEC="tok:len=$(json "$data/movielens.json" text_len),vocab=$(json "$data/dataset.json" "views['text']['vocab']"),dim=48,depth=2,heads=4,mlp=96,out=1"
COMP_SPEC="emb:cards=$(cards pair_genres),dim=16,mlp=128-64,out=1"
STUDENT_SPEC="emb:cards=$(cards pair),dim=4,mlp=16,out=1"
mkdir -p "$dir"
results=$dir/runs.jsonl
touch "$results"

# ------------------------------------------------------------------ teachers
t0=$(now)
for name in fm comp; do
    file=$dir/$name.safetensors
    [ -s "$file" ] && continue
    if [ $name = fm ]; then args=(--view text --model "$FM_SPEC" --epochs "$FM_EPOCHS" --lr 2e-3)
    else args=(--view pair_genres --model "$COMP_SPEC" --epochs "$COMP_EPOCHS" --lr 3e-3); fi
    say "fitting $name (${args[*]})"
    "$bin/teacher-server" fit --data "$data" "${args[@]}" --out "$file" 2>"$dir/$name.fit.log" ||
        die "fitting $name failed (log $dir/$name.fit.log)"
done
fit_seconds=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
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

# The trainer's flags of a method (teachers included).
method_args() {
    local fm=(--teacher "fm=${endpoint[fm]}") comp=(--teacher "comp=${endpoint[comp]}")
    case $1 in
    ce) echo --method ce ;;
    kd-fm) echo --method kd "${fm[@]}" ;;
    kd-comp) echo --method kd "${comp[@]}" ;;
    avg-kd | ca-mkd) echo --method "$1" "${fm[@]}" "${comp[@]}" ;;
    fitnet-fm) echo --method fitnet "${fm[@]}" ;;
    dd-fm) echo --method diversedistill "${fm[@]}" ;;
    dd) echo --method diversedistill "${fm[@]}" "${comp[@]}" ;;
    dd-filter) echo --method diversedistill --dd-filter 0.3 --cache off "${fm[@]}" "${comp[@]}" ;;
    esac
}
rmse() { "$bin/student-trainer" eval --model "$1" --data "$data" "${@:2}" | sed -n 's/.*rmse=\([0-9.]*\).*/\1/p'; }
# run TAG METHOD SEED LR EPOCHS KD_WEIGHT: trains one student, appends its result line.
run() {
    local tag=$1 method=$2 seed=$3 lr=$4 epochs=$5 weight=$6 t
    local file=$dir/$tag.safetensors
    if [ -s "$file" ] && grep -q "\"tag\": \"$tag\"" "$results"; then return; fi
    t=$(now)
    # shellcheck disable=SC2046 # method_args is a list of flags
    "$bin/student-trainer" train --data "$data" --view pair --model "$STUDENT_SPEC" \
        $(method_args "$method") --kd-weight "$weight" --epochs "$epochs" --lr "$lr" --seed "$seed" \
        --http off --out "$file" --metrics "$dir/$tag.jsonl" >"$dir/$tag.out" 2>"$dir/$tag.log" ||
        die "training $tag failed (log $dir/$tag.log)"
    local seconds
    seconds=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    "$python" - "$tag" "$method" "$seed" "$lr" "$epochs" "$weight" "$seconds" "$(rmse "$file")" \
        "$(rmse "$file" --max-test "$long_tail")" "$(rmse "$file" --split valid)" \
        "$dir/$tag.jsonl" >>"$results" <<'EOF'
import json, sys
tag, method, seed, lr, epochs, weight, seconds, test, tail, valid, metrics = sys.argv[1:]
lines = [json.loads(line) for line in open(metrics) if '"epoch"' in line]  # not the config line
counters = [t for line in lines for t in line["teachers"].values()]
print(json.dumps({"tag": tag, "method": method, "seed": int(seed), "lr": float(lr),
                  "epochs": int(epochs), "kd_weight": float(weight), "seconds": float(seconds),
                  "test_rmse": float(test), "long_tail_rmse": float(tail),
                  "valid_rmse": float(valid),
                  "filter_needed": sum(t["filter_needed"] for t in counters),
                  "filter_skipped": sum(t["filter_skipped"] for t in counters)}))
EOF
    echo "quality-movielens: $tag: $(tail -n 1 "$results")" >&2
}
best() { # PREFIX: the tag among runs.jsonl lines starting with PREFIX with the lowest valid RMSE
    "$python" -c 'import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["tag"].startswith(sys.argv[2])]
b = min(runs, key=lambda r: r["valid_rmse"])
print(b["lr"], b["epochs"], b["kd_weight"])' "$results" "$1"
}

# ------------------------------------------------------------------ tuning (valid split)
say "tuning on the valid split (seed 1)"
for lr in 0.003 0.01; do
    for epochs in 4 8; do run "tune-ce-lr$lr-e$epochs" ce 1 "$lr" "$epochs" 0.5; done
done
read -r LR EPOCHS _ <<<"$(best tune-ce-)"
echo "quality-movielens: student lr $LR, $EPOCHS epochs (best ce on valid)" >&2
declare -A weight
for method in $methods; do
    [ "$method" = ce ] && { weight[$method]=0.5; continue; }
    for w in 0.5 0.9; do run "tune-$method-w$w" "$method" 1 "$LR" "$EPOCHS" "$w"; done
    read -r _ _ weight[$method] <<<"$(best "tune-$method-w")"
    echo "quality-movielens: $method: --kd-weight ${weight[$method]} (best on valid)" >&2
done

# ------------------------------------------------------------------ the table
say "training every method at seeds $seeds"
for method in $methods; do
    for seed in $seeds; do run "final-$method-s$seed" "$method" "$seed" "$LR" "$EPOCHS" "${weight[$method]}"; done
done
fm_rmse=$(rmse "$dir/fm.safetensors")
comp_rmse=$(rmse "$dir/comp.safetensors")
"$python" bench/movielens/report.py --runs "$results" --out "$out" --fit-seconds "$fit_seconds" \
    --teacher "fm=$fm_rmse,$(rmse "$dir/fm.safetensors" --max-test "$long_tail")" \
    --teacher "comp=$comp_rmse,$(rmse "$dir/comp.safetensors" --max-test "$long_tail")"
