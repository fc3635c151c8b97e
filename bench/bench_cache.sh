#!/bin/bash
# bench_cache: a teacher-output cache bounded by --cache-memory, on a dataset folder too big
# for the unbounded cache's taste.
#
# Writes a synthetic dataset folder of ROWS training examples (default 10,000,000; set
# BENCH_CACHE_ROWS) with a dense float32 view "x" [ROWS, 8] and int64 labels (10 classes; the
# label is a function of the features), test split 10,000 rows.  A teacher MLP 8-16-10 is
# fitted on 20,000 of them and served on all; the student (mlp:8-32-10, --method kd, batch
# 256, 3 epochs: epoch 1 streams every teacher output into the cache, epochs 2 and 3 train
# from it; the faster of the two counts, as other jobs share the machine)
# is run these ways (BENCH_CACHE_RUNS picks some, in order; BENCH_CACHE_MEMORY sets the bound, 64):
#   ce       no teacher, no cache: the trainer's fixed memory for ROWS examples
#            (labels, the epoch's permutation, per-example flags, the dataset's tables)
#   memory   the unbounded in-memory cache (ROWS x 10 floats + a mask byte per example)
#   spill    --cache-memory 64 --cache-spill DIR: the rest in the spill file
#   spillmap the same with --cache-spill-reads map (a memcpy from the mapped file, no pread)
#   spill16  spill with --encoding F16 --cache-dtype f16 (half the bytes, exact)
#   resume   spill stopped early in epoch 2 (--stop-after), then --resume: the resumed process
#            loads the whole .state.cache (ROWS x 10 F32) back under the bound, into memory and
#            the spill file; its line is the resumed process's memory and its checkpoint must
#            be memory's
#   memresume the same without a bound (the whole cache loaded into memory), for contrast
# and reports per run: VmHWM (peak resident set, from /proc/PID/status at the end of the run),
# the peak of RssAnon (heap and anonymous maps: what the process really holds) and of RssFile
# (mapped file pages: the dataset folder's mmap'd view, page cache the kernel may reclaim),
# sampled every 0.1 s, and the cached epochs' examples/s; then spill / memory (goal >= 0.9
# with the spill file in the page cache, which it is: epoch 1 just wrote it).
# Everything lives in one temp dir under BENCH_CACHE_DIR (default /tmp), removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${COMMITTEE_BIN_DIR:-$here/build/bin}
rows=${BENCH_CACHE_ROWS:-10000000}
bound=${BENCH_CACHE_MEMORY:-64} # MB, --cache-memory of the bounded runs
export OPENBLAS_NUM_THREADS=1
work=$(mktemp -d "${BENCH_CACHE_DIR:-/tmp}/bench_cache.XXXXXX")
export COMMITTEE_CACHE_DIR=$work/hash-cache # the dataset's hash cache, private to the run
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench_cache: writing a $rows-example folder (float32 [$rows,8] + labels) in $work ..."
/usr/bin/python3 - "$work/data" "$rows" <<'EOF'
import json, os, sys
import numpy as np
root, rows = sys.argv[1], int(sys.argv[2])
os.makedirs(root)
json.dump({"format": "committee-dataset/1", "name": "bench-cache", "task": {"type": "classification", "classes": 10},
           "splits": ["train", "test"], "views": {"x": {"kind": "dense"}}}, open(f"{root}/dataset.json", "w"))
weights = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
for split, count in (("train", rows), ("test", 10000)):
    os.makedirs(f"{root}/{split}")
    x = np.lib.format.open_memmap(f"{root}/{split}/x.npy", mode="w+", dtype=np.float32, shape=(count, 8))
    labels = np.lib.format.open_memmap(f"{root}/{split}/labels.npy", mode="w+", dtype=np.int64, shape=(count,))
    rng = np.random.default_rng(1 if split == "train" else 2)
    for first in range(0, count, 1 << 20):
        chunk = rng.standard_normal((min(1 << 20, count - first), 8)).astype(np.float32)
        x[first:first + len(chunk)] = chunk
        labels[first:first + len(chunk)] = np.argmax(chunk @ weights, axis=1)
    x.flush(); labels.flush()
    del x, labels
EOF
du -sh "$work/data" | sed 's/^/bench_cache: folder /'

"$bin/teacher-server" fit --data "$work/data" --view x --model mlp:8-16-10 --epochs 2 --lr 3e-3 \
    --max-train 20000 --out "$work/teacher.safetensors" >"$work/fit.log" 2>&1 ||
    { cat "$work/fit.log"; exit 1; }
"$bin/teacher-server" serve --data "$work/data" --model "$work/teacher.safetensors" \
    --name t --bind "ipc://$work/t.sock" --http off >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do
    grep -q serving "$work/serve.log" && break
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.5
done
grep -q serving "$work/serve.log" || { cat "$work/serve.log"; exit 1; }

# train LABEL ARGS...: runs the trainer, samples its memory, prints one line (STOPPED=1: the
# run stops itself with --stop-after, exit 130).
train() {
    local label=$1 expect=0
    shift
    [ "${STOPPED:-0}" = 1 ] && expect=130
    "$bin/student-trainer" train --data "$work/data" --view x --model mlp:8-32-10 --batch 256 \
        --epochs 3 --threads 1 --http off --out "$work/$label.safetensors" \
        --metrics "$work/$label.jsonl" "$@" >/dev/null 2>"$work/$label.err" &
    local pid=$! anon=0 file=0 hwm=0 value
    while kill -0 "$pid" 2>/dev/null; do
        if [ -r "/proc/$pid/status" ]; then
            value=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$value" ] && [ "$value" -gt "$anon" ] && anon=$value
            value=$(awk '/^RssFile:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$value" ] && [ "$value" -gt "$file" ] && file=$value
            value=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$value" ] && hwm=$value
        fi
        sleep 0.1
    done
    local status=0
    wait "$pid" || status=$?
    [ "$status" = "$expect" ] ||
        { echo "bench_cache: $label exited $status:"; tail -5 "$work/$label.err"; exit 1; }
    local rate
    rate=$(grep -E '"epoch":(2|3),' "$work/$label.jsonl" | grep -o '"examples_per_second":[0-9.]*' |
        cut -d: -f2 | sort -g | tail -1 || true) # the faster of the cached epochs 2 and 3 (shared machine)
    eval "rate_$label=$rate"
    [ "$expect" = 130 ] && return # the stopped half of a resume: the resumed half reports
    printf "%-9s VmHWM %5d MB   peak RssAnon %5d MB   peak RssFile %5d MB   epochs 2-3 %9.0f examples/s  %s\n" \
        "$label" $((hwm / 1024)) $((anon / 1024)) $((file / 1024)) "${rate:-0}" \
        "$(grep -o 'teacher cache[ a-z]*: .*' "$work/$label.err" | tail -1)"
}

# resume LABEL ARGS...: the run stopped 10 steps into epoch 2 (the whole cache fetched), then
# resumed; the line is the resumed process's.
resume() {
    local label=$1
    shift
    STOPPED=1 train "$label" "$@" --stop-after $(((rows + 255) / 256 + 10))
    train "$label" "$@" --resume
}

mkdir "$work/spill"
teacher=(--method kd --teacher t="ipc://$work/t.sock")
spill=(--cache-memory "$bound" --cache-spill "$work/spill")
# A subset, in the order given, e.g. BENCH_CACHE_RUNS="spillmap memory" (the load of a shared
# machine drifts: swapping the order shows how much of a ratio is drift).
for run in ${BENCH_CACHE_RUNS:-ce memory spill spillmap spill16 resume}; do
    case $run in
    ce) train ce --method ce ;;
    memory) train memory "${teacher[@]}" ;;
    spill) train spill "${teacher[@]}" "${spill[@]}" ;;
    spillmap) train spillmap "${teacher[@]}" "${spill[@]}" --cache-spill-reads map ;;
    spill16) train spill16 "${teacher[@]}" "${spill[@]}" --encoding F16 --cache-dtype f16 ;;
    resume) resume resume "${teacher[@]}" "${spill[@]}" ;;
    memresume) resume memresume "${teacher[@]}" ;;
    *) echo "bench_cache: unknown run '$run'"; exit 2 ;;
    esac
done
for label in spill spillmap resume memresume; do
    [ -e "$work/$label.safetensors" ] && [ -e "$work/memory.safetensors" ] || continue
    # the same tensors and metadata, but the saved config (its cache options differ)
    # (exit 3: they differ; any other failure is the comparison's own, its traceback above)
    status=0
    PYTHONPATH="$here/python" COMMITTEE_PB2_DIR="${COMMITTEE_PB2_DIR:-$bin/../python}" \
        /usr/bin/python3 - "$work/memory.safetensors" "$work/$label.safetensors" <<'EOF' || status=$?
import sys
from committee import safetensors
(a, ma), (b, mb) = (safetensors.load(path) for path in sys.argv[1:])
ma.pop("config", None), mb.pop("config", None)
same = ma == mb and a.keys() == b.keys() and all((a[k] == b[k]).all() and a[k].dtype == b[k].dtype for k in a)
sys.exit(0 if same else 3)
EOF
    [ "$status" = 3 ] && { echo "bench_cache: $label and memory checkpoints differ"; exit 1; }
    [ "$status" = 0 ] || { echo "bench_cache: could not compare the $label and memory checkpoints"; exit 1; }
    echo "bench_cache: $label gives the checkpoint of memory (identical tensors and metadata)"
done
for label in spill spillmap spill16; do
    rate=rate_$label
    [ -n "${!rate:-}" ] && [ -n "${rate_memory:-}" ] || continue
    awk -v run="${!rate}" -v memory="$rate_memory" -v label="$label" 'BEGIN {
        printf "bench_cache: cached epochs, %s / memory: %.2fx (goal >= 0.9x)\n", label, run / memory }'
done
