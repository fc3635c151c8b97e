#!/usr/bin/env bash
# make demo: the whole of committee on one machine, in a few minutes.
#
#   1. builds the binaries (make);
#   2. fits the committee unless its checkpoints already exist:
#        fm    the foundation teacher, a small ViT on full 28x28 images;
#        comp  the complementary teacher, a wide MLP on the student's 7x7 view;
#      (both in parallel, one core each);
#   3. serves both on free loopback ports and waits for their /readyz;
#   4. trains the student (MLP 49-64-64-10 on pool7) twice with the same
#      seed, epochs and labels: once alone (--method ce) and once distilled
#      from the committee ($DISTILL_METHOD below);
#   5. prints one table: every model's test accuracy and where its
#      checkpoint and metrics are;
#   6. writes a report of the three students' runs with plots
#      (python3 -m committee report): $DEMO_DIR/report/index.html.
# The servers are stopped however the script ends (trap on EXIT, INT, TERM).
#
# Settings (environment): DEMO_DIR (default runs/demo), DEMO_FM_EPOCHS,
# DEMO_COMP_EPOCHS, DEMO_STUDENT_EPOCHS, DEMO_LABEL_FRACTION, DEMO_METHOD,
# DEMO_REFIT=1 (fit the teachers again even if their checkpoints exist).
set -euo pipefail

# The baseline distillation method of the demo: the best one measured on this
# setup (see deploy/README.md, "make demo"). DiverseDistill runs beside it, so
# the table shows both honestly.
DISTILL_METHOD=${DEMO_METHOD:-kd}
DD_ARGS=(--method diversedistill --kd-weight 0.9)
# Only 10% of the training labels reach the student (the teachers still answer
# for all 60k images): the realistic case where distillation matters. With all
# labels a 7x7-view student is limited by its view and every method lands
# within about half a point.
LABEL_FRACTION=${DEMO_LABEL_FRACTION:-0.1}
FM_EPOCHS=${DEMO_FM_EPOCHS:-12}
COMP_EPOCHS=${DEMO_COMP_EPOCHS:-20}
STUDENT_EPOCHS=${DEMO_STUDENT_EPOCHS:-30}

FM_SPEC="vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128"
COMP_SPEC="mlp:49-512-512-10"
STUDENT_SPEC="mlp:49-64-64-10"

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=${DEMO_DIR:-runs/demo}
bin=$root/build/bin
# One OpenBLAS thread per process (the binaries' default too): teachers and the
# trainer share two cores, and more threads only make them fight.
export OPENBLAS_NUM_THREADS=1

# The flags that make the chosen method distill from the committee.
case "$DISTILL_METHOD" in
kd | fitnet)
    distill_args=(--method "$DISTILL_METHOD" --kd-teacher comp)
    distill_label="$DISTILL_METHOD from comp"
    ;;
*)
    distill_args=(--method "$DISTILL_METHOD")
    distill_label="$DISTILL_METHOD from fm+comp"
    ;;
esac

say() { printf '\n== demo: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
die() {
    echo "demo: FAILED: $*" >&2
    exit 1
}

server_pids=() # teacher servers
job_pids=()    # fits and trainings in flight (subshells of pipelines)
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
        # SIGTERM is a graceful stop; give each server 10 s, then kill it.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ ${#server_pids[@]} -eq 0 ] || echo "demo: teacher servers stopped" >&2
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port VAR START: sets VAR to a TCP port at or above START that nobody on
# this machine listens on and this script has not handed out yet. (A variable,
# not $(...): the list of handed-out ports must survive the call.)
port_in_use() {
    if command -v ss >/dev/null; then
        [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
taken_ports=" "
free_port() {
    local -n result=$1
    local port=$2
    while port_in_use "$port" || [[ $taken_ports == *" $port "* ]]; do
        port=$((port + 1))
        [ "$port" -lt 65000 ] || die "no free TCP port"
    done
    taken_ports="$taken_ports$port "
    # shellcheck disable=SC2034 # a nameref: this sets the caller's variable
    result=$port
}

# HTTP status line of GET $2 on 127.0.0.1:$1, with nothing but bash.
http_get_status() {
    local reply
    reply=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$1" >&3
        head -n 1 <&3' "$1" "$2" 2>/dev/null) || return 1
    [[ $reply == *" 200"* ]]
}

# accuracy=0.8123 ... -> 0.8123
eval_accuracy() {
    "$bin/student-trainer" eval --model "$1" | sed -n 's/.*accuracy=\([0-9.]*\).*/\1/p' | head -n 1
}

t_start=$(now)

# ------------------------------------------------------------------ build
say "building (make)"
make --no-print-directory -s all
mkdir -p "$dir"
fm=$dir/fm.safetensors
comp=$dir/comp.safetensors

# ------------------------------------------------------------------ fit
t_fit=$(now)
fit_pids=()
fit() { # NAME SPEC VIEW EPOCHS LR FILE
    local name=$1 spec=$2 view=$3 epochs=$4 lr=$5 file=$6
    if [ -s "$file" ] && [ "${DEMO_REFIT:-0}" != 1 ]; then
        echo "demo: $name: using the existing $file (DEMO_REFIT=1 fits it again)" >&2
        return
    fi
    echo "demo: $name: fitting $spec on $view for $epochs epochs -> $file" >&2
    ("$bin/teacher-server" fit --view "$view" --model "$spec" --epochs "$epochs" --lr "$lr" \
        --out "$file" 2>&1 | tee "$dir/$name.fit.log" | sed -u "s/^/[fit $name] /" >&2) &
    fit_pids+=($!)
    job_pids+=($!)
}
say "fitting the committee (foundation fm: ViT on full; complementary comp: MLP on pool7)"
fit fm "$FM_SPEC" full "$FM_EPOCHS" 2e-3 "$fm"
fit comp "$COMP_SPEC" pool7 "$COMP_EPOCHS" 1e-3 "$comp"
for pid in "${fit_pids[@]}"; do wait "$pid" || die "a teacher fit failed (logs in $dir/*.fit.log)"; done
[ -s "$fm" ] && [ -s "$comp" ] || die "teacher checkpoints missing (logs in $dir/*.fit.log)"
fit_seconds=$(since "$t_fit")

# ------------------------------------------------------------------ serve
t_serve=$(now)
say "serving the committee on loopback"
declare -A zmq_port http_port
serve() { # NAME FILE
    local name=$1 file=$2
    local zmq http
    free_port zmq 5555
    free_port http 9100
    zmq_port[$name]=$zmq
    http_port[$name]=$http
    echo "demo: $name: tcp://127.0.0.1:${zmq_port[$name]}, http://127.0.0.1:${http_port[$name]}/readyz, log $dir/$name.serve.log" >&2
    "$bin/teacher-server" serve --model "$file" --name "$name" \
        --bind "tcp://127.0.0.1:${zmq_port[$name]}" --http "127.0.0.1:${http_port[$name]}" \
        >"$dir/$name.serve.log" 2>&1 &
    server_pids+=($!)
}
serve fm "$fm"
serve comp "$comp"
# Ready means: our process is alive and /readyz on its port answers 200.
index=0
for name in fm comp; do
    pid=${server_pids[$index]}
    index=$((index + 1))
    ready=0
    for _ in $(seq 600); do # 60 s
        kill -0 "$pid" 2>/dev/null || { tail -n 5 "$dir/$name.serve.log" >&2; die "teacher $name exited"; }
        if http_get_status "${http_port[$name]}" /readyz; then ready=1; break; fi
        sleep 0.1
    done
    [ "$ready" = 1 ] || die "teacher $name not ready after 60 s (log $dir/$name.serve.log)"
done
# A server that lost a race for its port exits at once: check both again.
sleep 0.3
for index in 0 1; do
    name=$([ "$index" = 0 ] && echo fm || echo comp)
    kill -0 "${server_pids[$index]}" 2>/dev/null ||
        { tail -n 5 "$dir/$name.serve.log" >&2; die "teacher $name exited"; }
    echo "demo: $name is ready" >&2
done
serve_seconds=$(since "$t_serve")

# ------------------------------------------------------------------ train
teachers=(--teacher "fm=tcp://127.0.0.1:${zmq_port[fm]}" --teacher "comp=tcp://127.0.0.1:${zmq_port[comp]}")
train() { # TAG METHOD-ARGS...
    local tag=$1
    shift
    # In the background so that a signal to this script is handled at once.  --http on a free
    # port: the trainer's default 127.0.0.1:9101 may be taken on the demo's machine.
    ("$bin/student-trainer" train --view pool7 --model "$STUDENT_SPEC" "${teachers[@]}" "$@" \
        --epochs "$STUDENT_EPOCHS" --label-fraction "$LABEL_FRACTION" --seed 1 \
        --http 127.0.0.1:0 --out "$dir/student-$tag.safetensors" --metrics "$dir/student-$tag.jsonl" \
        2>&1 >"$dir/student-$tag.out" | tee "$dir/student-$tag.log" | sed -u "s/^/[$tag] /" >&2) &
    job_pids+=($!)
    wait $! || die "training the $tag student failed (log $dir/student-$tag.log)"
    cat "$dir/student-$tag.out"
}
t_ce=$(now)
say "training the student alone (--method ce, $STUDENT_EPOCHS epochs, label fraction $LABEL_FRACTION)"
rm -f "$dir/student-ce.safetensors.state" "$dir/student-ce.jsonl"
train ce --method ce
ce_seconds=$(since "$t_ce")

t_distill=$(now)
say "training the student distilled from the committee (${distill_args[*]}, $STUDENT_EPOCHS epochs, label fraction $LABEL_FRACTION)"
rm -f "$dir/student-$DISTILL_METHOD.safetensors.state" "$dir/student-$DISTILL_METHOD.jsonl"
train "$DISTILL_METHOD" "${distill_args[@]}"
distill_seconds=$(since "$t_distill")

t_dd=$(now)
say "training the student with DiverseDistill from fm+comp (${DD_ARGS[*]}, $STUDENT_EPOCHS epochs, label fraction $LABEL_FRACTION)"
rm -f "$dir/student-dd.safetensors.state" "$dir/student-dd.jsonl"
train dd "${DD_ARGS[@]}"
dd_seconds=$(since "$t_dd")

# ------------------------------------------------------------------ table
say "evaluating"
fm_acc=$(eval_accuracy "$fm")
comp_acc=$(eval_accuracy "$comp")
ce_acc=$(eval_accuracy "$dir/student-ce.safetensors")
kd_acc=$(eval_accuracy "$dir/student-$DISTILL_METHOD.safetensors")
dd_acc=$(eval_accuracy "$dir/student-dd.safetensors")
say "writing the report of the students' runs"
PYTHONPATH="$root/python:$root/build/python${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-/usr/bin/python3}" \
    -m committee report "$dir/student-ce.jsonl" "$dir/student-$DISTILL_METHOD.jsonl" \
    "$dir/student-dd.jsonl" --out "$dir/report" \
    --title "committee demo: students on pool7 with $LABEL_FRACTION of the labels" >/dev/null ||
    die "python3 -m committee report failed"
total_seconds=$(since "$t_start")

row() { printf '%-50s %-6s %-9s %-38s %s\n' "$@"; }
{
    echo
    echo "committee demo: test accuracy on Fashion-MNIST (10000 test images); the students saw $LABEL_FRACTION of the training labels"
    row "model" "view" "accuracy" "checkpoint" "metrics / log"
    row "teacher fm: ViT patch 7, dim 64, depth 2" full "$fm_acc" "$fm" "$dir/fm.fit.log"
    row "teacher comp: MLP 49-512-512-10" pool7 "$comp_acc" "$comp" "$dir/comp.fit.log"
    row "student: MLP 49-64-64-10, ce (alone)" pool7 "$ce_acc" "$dir/student-ce.safetensors" "$dir/student-ce.jsonl"
    row "student: MLP 49-64-64-10, $distill_label" pool7 "$kd_acc" "$dir/student-$DISTILL_METHOD.safetensors" "$dir/student-$DISTILL_METHOD.jsonl"
    row "student: MLP 49-64-64-10, diversedistill fm+comp" pool7 "$dd_acc" "$dir/student-dd.safetensors" "$dir/student-dd.jsonl"
    awk -v a="$ce_acc" -v b="$kd_acc" -v c="$dd_acc" 'BEGIN { printf "distillation: %+.2f points (%s), %+.2f points (diversedistill) over the student alone\n", 100 * (b - a), "'"$distill_label"'", 100 * (c - a) }'
    echo "timings: fit ${fit_seconds}s, serve-ready ${serve_seconds}s, student ce ${ce_seconds}s," \
        "student $DISTILL_METHOD ${distill_seconds}s, student diversedistill ${dd_seconds}s, total ${total_seconds}s"
    echo "teacher logs: $dir/fm.serve.log $dir/comp.serve.log"
    echo "report (plots of the students' runs): $dir/report/index.html"
} | tee "$dir/summary.txt"
