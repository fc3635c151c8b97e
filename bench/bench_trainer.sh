#!/bin/bash
# bench_trainer: what streaming teacher outputs costs the training loop.
#
# One run on this machine, all of Fashion-MNIST (60k train):
#   - student MLP 49-64-64-10 (pool7), method avg-kd, batch 128, two teachers served by real
#     teacher-server processes over tcp loopback (1 BLAS thread each, sharing the 2 cores
#     with the trainer):
#       epoch 1 streams every teacher output; epoch 2 replays them from the in-memory cache;
#       with --cache off every epoch streams.
#   - ratio streaming / cached examples per second, for a committee that keeps up (two MLP
#     teachers) and for one whose foundation teacher is a ViT (compute-bound);
#   - the same with cheap teachers and a bigger student (mlp:49-512-512-10), i.e. teachers
#     that keep up with the training step: there the ratio shows what streaming itself costs;
#   - CE alone (no teachers) for reference.
# Teachers are fitted for one quick epoch on 2000 examples (speed does not depend on how
# well they are trained) and served on the full data.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${COMMITTEE_BIN_DIR:-$here/build/bin}
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || { echo "SKIP: Fashion-MNIST is not installed"; exit 0; }
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fit() { # name view spec
    "$bin/teacher-server" fit --view "$2" --model "$3" --epochs 1 --max-train 2000 --max-test 500 \
        --out "$work/$1.safetensors" >/dev/null 2>&1
}
serve() { # name: starts a teacher in this shell (so cleanup can stop it)
    "$bin/teacher-server" serve --model "$work/$1.safetensors" --name "$1" --bind "tcp://127.0.0.1:*" \
        --http off >"$work/$1.log" 2>&1 &
    pids+=($!)
}
endpoint() { # name -> prints the endpoint the teacher bound
    for _ in $(seq 100); do
        local found
        found=$(grep -o 'on tcp://127.0.0.1:[0-9]*' "$work/$1.log" | head -1 | cut -c4- || true)
        [ -n "$found" ] && { echo "$found"; return; }
        sleep 0.1
    done
    echo "teacher $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}
rate() { # metrics file, epoch number -> examples_per_second (the config line is not an epoch)
    grep '"epoch"' "$1" | sed -n "${2}p" | grep -o '"examples_per_second":[0-9.]*' | cut -d: -f2
}
train() { # label extra-args...
    local label=$1; shift
    "$bin/student-trainer" train --view pool7 --model "${STUDENT:-mlp:49-64-64-10}" --batch 128 --epochs 2 \
        --http off --out "$work/$label.safetensors" --metrics "$work/$label.jsonl" "$@" >/dev/null 2>"$work/$label.err" ||
        { cat "$work/$label.err" >&2; exit 1; }
}

fit comp pool7 mlp:49-512-512-10
fit fm_mlp full mlp:784-512-10
fit fm_vit full vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128
fit fm_tiny full mlp:784-16-10
fit comp_tiny pool7 mlp:49-16-10
for name in comp fm_mlp fm_vit fm_tiny comp_tiny; do serve "$name"; done
comp=$(endpoint comp)
fm_mlp=$(endpoint fm_mlp)
fm_vit=$(endpoint fm_vit)
fm_tiny=$(endpoint fm_tiny)
comp_tiny=$(endpoint comp_tiny)

train ce --method ce
train keep --method avg-kd --teacher fm="$fm_mlp" --teacher comp="$comp"
train keep_off --method avg-kd --cache off --teacher fm="$fm_mlp" --teacher comp="$comp"
train vit --method avg-kd --teacher fm="$fm_vit" --teacher comp="$comp"
# Teachers that keep up: cheap teachers, a student whose step costs more than their forward pass.
STUDENT=mlp:49-512-512-10 train keepup --method avg-kd --teacher fm="$fm_tiny" --teacher comp="$comp_tiny"
STUDENT=mlp:49-512-512-10 train keepup_off --method avg-kd --cache off --teacher fm="$fm_tiny" --teacher comp="$comp_tiny"

ce=$(rate "$work/ce.jsonl" 2)
keep_stream=$(rate "$work/keep.jsonl" 1); keep_cached=$(rate "$work/keep.jsonl" 2)
keep_off=$(rate "$work/keep_off.jsonl" 2)
vit_stream=$(rate "$work/vit.jsonl" 1); vit_cached=$(rate "$work/vit.jsonl" 2)
up_stream=$(rate "$work/keepup.jsonl" 1); up_cached=$(rate "$work/keepup.jsonl" 2)
up_off=$(rate "$work/keepup_off.jsonl" 2)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "| student-trainer, MLP 49-64-64-10 on pool7, avg-kd, batch 128, 60k examples | examples/s | vs cached |"
echo "|---|---|---|"
echo "| CE only, no teachers | $ce | |"
echo "| MLP committee (fm 784-512-10, comp 49-512-512-10), epoch 2 replayed from cache | $keep_cached | 1.00 |"
echo "| MLP committee, epoch 1 streamed from the teachers | $keep_stream | $(ratio "$keep_stream" "$keep_cached") |"
echo "| MLP committee, --cache off, epoch 2 streamed again | $keep_off | $(ratio "$keep_off" "$keep_cached") |"
echo "| ViT foundation + MLP comp, epoch 2 replayed from cache | $vit_cached | 1.00 |"
echo "| ViT foundation + MLP comp, epoch 1 streamed (teacher-bound) | $vit_stream | $(ratio "$vit_stream" "$vit_cached") |"
echo "| teachers that keep up (784-16-10, 49-16-10), student 49-512-512-10, epoch 2 from cache | $up_cached | 1.00 |"
echo "| teachers that keep up, epoch 1 streamed | $up_stream | $(ratio "$up_stream" "$up_cached") |"
echo "| teachers that keep up, --cache off, epoch 2 streamed again | $up_off | $(ratio "$up_off" "$up_cached") |"
