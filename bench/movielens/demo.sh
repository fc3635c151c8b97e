#!/usr/bin/env bash
# make demo-movielens: the paper's experiment (arXiv 2402.14035, MovieLens) in small.
#
#   1. makes the MovieLens dataset folder unless it exists (prepare.sh: export with
#      Rscript from Debian's r-cran-dslabs, convert, data check);
#   2. fits the committee unless its checkpoints exist (both at once, one core each):
#        fm    the foundation teacher, a token transformer on `text` (the movie's
#              title, year and genres and the user's earlier train ratings);
#        comp  the complementary teacher, an embedding recommender on `pair_genres`;
#   3. serves both on ephemeral loopback ports (HTTP off) and reads their endpoints
#      from their "serving ... on tcp://..." line;
#   4. trains the ID-only student (an emb: model on `pair`, user and movie id) three
#      times with the same seed and epochs: ce (MSE alone), kd from fm, and
#      diversedistill from fm+comp;
#   5. prints the table: test RMSE overall and on the long tail (test movies with
#      fewer than 5 train ratings, the first rows of the test split), parameters, and
#      the compression ratio foundation / student.
# The servers are stopped however the script ends (trap on EXIT, INT, TERM).
#
# Settings (environment): MOVIELENS_DIR (the folder, default build/data/movielens),
# DEMO_DIR (default runs/demo-movielens), DEMO_FM_EPOCHS, DEMO_COMP_EPOCHS,
# DEMO_STUDENT_EPOCHS, DEMO_REFIT=1 (fit the teachers again), BIN (the binaries).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=${BIN:-$root/build/bin}
python=${PYTHON:-/usr/bin/python3}
data=${MOVIELENS_DIR:-build/data/movielens}
dir=${DEMO_DIR:-runs/demo-movielens}
FM_EPOCHS=${DEMO_FM_EPOCHS:-3}
COMP_EPOCHS=${DEMO_COMP_EPOCHS:-8}
STUDENT_EPOCHS=${DEMO_STUDENT_EPOCHS:-8}
# The recipes are what `make bench-quality`'s MovieLens section chose on the valid split (the
# tuning holdout; bench/results/movielens.md): weight decay 1 for fm (3 epochs here, within
# 0.003 valid RMSE of its 5), 0.5 for comp and the student (lr 0.003, cosine).
FM_WEIGHT_DECAY=1
COMP_WEIGHT_DECAY=0.5
STUDENT_LR=0.003
STUDENT_WEIGHT_DECAY=0.5
KD_WEIGHT=0.2 # kd(fm)'s and diversedistill's --kd-weight on valid (of 0.2, 0.5, 0.9)
export OPENBLAS_NUM_THREADS=1

say() { printf '\n== demo-movielens: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
die() {
    echo "demo-movielens: FAILED: $*" >&2
    exit 1
}

server_pids=()
job_pids=()
stop_all() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${job_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${server_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${server_pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ ${#server_pids[@]} -eq 0 ] || echo "demo-movielens: teacher servers stopped" >&2
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t_start=$(now)

# ------------------------------------------------------------------ data
say "dataset folder $data"
BIN=$bin PYTHON=$python bench/movielens/prepare.sh "$data" >&2
info=$data/movielens.json
json() { "$python" -c 'import json, sys; print(eval(sys.argv[2], {}, json.load(open(sys.argv[1]))))' "$@"; }
cards() { json "$data/dataset.json" "'x'.join(map(str, views['$1']['cardinality']))"; }
vocab=$(json "$data/dataset.json" "views['text']['vocab']")
text_len=$(json "$info" "text_len")
long_tail=$(json "$info" "long_tail_test")
tests=$(json "$info" "counts['test']")

FM_SPEC="tok:len=$text_len,vocab=$vocab,dim=48,depth=2,heads=4,mlp=96,out=1"
COMP_SPEC="emb:cards=$(cards pair_genres),dim=32,mlp=128-64,out=1"
STUDENT_SPEC="emb:cards=$(cards pair),dim=4,mlp=16,out=1"

mkdir -p "$dir"
fm=$dir/fm.safetensors
comp=$dir/comp.safetensors

# ------------------------------------------------------------------ fit
t_fit=$(now)
fit_pids=()
fit() { # NAME SPEC VIEW EPOCHS LR WEIGHT_DECAY FILE
    local name=$1 spec=$2 view=$3 epochs=$4 lr=$5 wd=$6 file=$7
    if [ -s "$file" ] && [ "${DEMO_REFIT:-0}" != 1 ]; then
        echo "demo-movielens: $name: using the existing $file (DEMO_REFIT=1 fits it again)" >&2
        return
    fi
    echo "demo-movielens: $name: fitting $spec on $view for $epochs epochs -> $file" >&2
    ("$bin/teacher-server" fit --data "$data" --view "$view" --model "$spec" --epochs "$epochs" \
        --lr "$lr" --weight-decay "$wd" --out "$file" 2>&1 | tee "$dir/$name.fit.log" | sed -u "s/^/[fit $name] /" >&2) &
    fit_pids+=($!)
    job_pids+=($!)
}
say "fitting the committee (fm: token transformer on text; comp: embedding model on pair_genres)"
fit fm "$FM_SPEC" text "$FM_EPOCHS" 2e-3 "$FM_WEIGHT_DECAY" "$fm"
fit comp "$COMP_SPEC" pair_genres "$COMP_EPOCHS" 3e-3 "$COMP_WEIGHT_DECAY" "$comp"
for pid in "${fit_pids[@]}"; do wait "$pid" || die "a teacher fit failed (logs in $dir/*.fit.log)"; done
[ -s "$fm" ] && [ -s "$comp" ] || die "teacher checkpoints missing (logs in $dir/*.fit.log)"
fit_seconds=$(since "$t_fit")

# ------------------------------------------------------------------ serve
t_serve=$(now)
say "serving the committee on loopback"
declare -A endpoint
index=0
for name in fm comp; do
    file=$([ "$name" = fm ] && echo "$fm" || echo "$comp")
    "$bin/teacher-server" serve --model "$file" --name "$name" --data "$data" \
        --bind tcp://127.0.0.1:0 --http off >"$dir/$name.serve.log" 2>&1 &
    server_pids+=($!)
done
for name in fm comp; do
    pid=${server_pids[$index]}
    index=$((index + 1))
    for _ in $(seq 1200); do # 120 s
        kill -0 "$pid" 2>/dev/null || { tail -n 5 "$dir/$name.serve.log" >&2; die "teacher $name exited"; }
        endpoint[$name]=$(sed -n "s/.*serving '.*' (.*) on \(tcp:[^,]*\),.*/\1/p" "$dir/$name.serve.log")
        [ -z "${endpoint[$name]}" ] || break
        sleep 0.1
    done
    [ -n "${endpoint[$name]}" ] || die "teacher $name not serving after 120 s (log $dir/$name.serve.log)"
    echo "demo-movielens: $name serves on ${endpoint[$name]}" >&2
done
serve_seconds=$(since "$t_serve")

# ------------------------------------------------------------------ train
teachers=(--teacher "fm=${endpoint[fm]}" --teacher "comp=${endpoint[comp]}")
declare -A seconds
train() { # TAG METHOD-ARGS...
    local tag=$1 t
    shift
    t=$(now)
    rm -f "$dir/student-$tag.safetensors.state" "$dir/student-$tag.jsonl"
    say "training the student: $tag ($*, $STUDENT_EPOCHS epochs)"
    ("$bin/student-trainer" train --data "$data" --view pair --model "$STUDENT_SPEC" "${teachers[@]}" \
        "$@" --epochs "$STUDENT_EPOCHS" --lr "$STUDENT_LR" \
        --weight-decay "$STUDENT_WEIGHT_DECAY" --schedule cosine --seed 1 --http off \
        --out "$dir/student-$tag.safetensors" --metrics "$dir/student-$tag.jsonl" \
        2>&1 >"$dir/student-$tag.out" | tee "$dir/student-$tag.log" | sed -u "s/^/[$tag] /" >&2) &
    job_pids+=($!)
    wait $! || die "training the $tag student failed (log $dir/student-$tag.log)"
    seconds[$tag]=$(since "$t")
}
train ce --method ce
train kd --method kd --kd-teacher fm --kd-weight "$KD_WEIGHT"
train dd --method diversedistill --kd-weight "$KD_WEIGHT"

# ------------------------------------------------------------------ table
say "evaluating"
rmse() { # FILE [eval options]: the RMSE of a checkpoint on the test split
    "$bin/student-trainer" eval --model "$1" --data "$data" "${@:2}" |
        sed -n 's/.*rmse=\([0-9.]*\).*/\1/p' | head -n 1
}
params() { # FILE: parameters of a checkpoint (every tensor of its safetensors header)
    "$python" - "$1" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
total = 0
for name, tensor in header.items():
    if name != "__metadata__" and "running_" not in name:
        n = 1
        for d in tensor["shape"]:
            n *= d
        total += n
print(total)
EOF
}
fm_params=$(params "$fm")
comp_params=$(params "$comp")
student_params=$(params "$dir/student-ce.safetensors")
row() { printf '%-44s %-12s %-9s %-10s %s\n' "$@"; }
total_seconds=$(since "$t_start")
{
    echo
    echo "committee demo-movielens: test RMSE (stars) on MovieLens latest-small, each user's last rating" \
        "($tests test ratings; long tail: the $long_tail whose movie has < 5 train ratings)"
    row "model" "view" "RMSE" "long tail" "parameters"
    row "teacher fm: tok dim 48, depth 2 ($FM_EPOCHS epochs)" text "$(rmse "$fm")" \
        "$(rmse "$fm" --max-test "$long_tail")" "$fm_params"
    row "teacher comp: emb dim 32, mlp 128-64" pair_genres "$(rmse "$comp")" \
        "$(rmse "$comp" --max-test "$long_tail")" "$comp_params"
    for tag in ce kd dd; do
        label=$(case $tag in ce) echo "ce (MSE alone)" ;; kd) echo "kd from fm" ;; dd) echo "diversedistill fm+comp" ;; esac)
        row "student: emb dim 4, mlp 16, $label" pair "$(rmse "$dir/student-$tag.safetensors")" \
            "$(rmse "$dir/student-$tag.safetensors" --max-test "$long_tail")" "$student_params"
    done
    awk -v a="$fm_params" -v b="$student_params" 'BEGIN { printf "compression: foundation / student = %d / %d = %.1fx\n", a, b, a / b }'
    echo "timings: fit ${fit_seconds}s, serve ${serve_seconds}s, students ce ${seconds[ce]}s," \
        "kd ${seconds[kd]}s, diversedistill ${seconds[dd]}s, total ${total_seconds}s"
    echo "logs and checkpoints: $dir"
} | tee "$dir/summary.txt"
