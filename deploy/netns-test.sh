#!/usr/bin/env bash
# make check-netns: teachers on "other hosts", simulated with network namespaces.
#
# Topology (everything inside namespaces this script creates; nothing is added
# to the machine's own network namespace):
#
#   ns cmt<PID>-fm    eth0 10.231.7.1/24 ─┐
#   ns cmt<PID>-comp  eth0 10.231.7.2/24 ─┼─ ns cmt<PID>-sw: bridge br0
#   ns cmt<PID>-tr    eth0 10.231.7.10/24 ┘   (ports p-fm, p-comp, p-tr)
#
# Each teacher serves in its own namespace on its own address (--bind
# tcp://10.231.7.X:5555 --insecure-public); the trainer trains from its
# namespace with avg-kd (asks both teachers) and --cache off (every epoch asks
# again). After epoch 2 the link of comp is cut (ip link set p-comp down on the
# switch: packets vanish, no reset, like a pulled cable) and restored
# $CUT_SECONDS later. Two runs:
#   wait: --on-teacher-failure wait --teacher-timeout-ms 1000; the trainer
#         must notice (comp.down_events >= 1), block rather than train without
#         comp (no skipped batches, wait_seconds >= 2 in some epoch), use comp
#         again after the restore (its replies keep growing) and finish;
#   skip: --on-teacher-failure skip; it must keep training without comp
#         (comp.skipped_batches > 0), use it again after the restore and finish.
# Namespaces and processes are removed however the script ends. Bounded: each
# trainer run has a 180 s limit. Prints PASS or FAIL; exit 0 only on PASS.
#
# Needs root and iproute2 (installed with apt-get if missing). Environment:
# NETNS_KEEP=1 keeps the work folder (logs, metrics) for a post-mortem.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin
CUT_SECONDS=${NETNS_CUT_SECONDS:-4}
EPOCHS=${NETNS_EPOCHS:-16}
# Under skip the epochs without comp are fast and a returning teacher is noticed
# within a couple of seconds (Hello probes, TCP retransmission back-off): a
# longer run keeps "comp is used again" observable.
SKIP_EPOCHS=${NETNS_SKIP_EPOCHS:-40}
MAX_TRAIN=20000
export OPENBLAS_NUM_THREADS=1

say() { printf '== netns-test: %s\n' "$*" >&2; }
now() { date +%s; }
t_start=$(now)

if [ "$(id -u)" -ne 0 ]; then
    echo "FAIL netns-test: needs root (network namespaces); run: sudo make check-netns"
    exit 1
fi
if ! command -v ip >/dev/null; then
    say "installing iproute2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null; } ||
        { echo "FAIL netns-test: cannot install iproute2"; exit 1; }
fi
[ -x "$bin/teacher-server" ] && [ -x "$bin/student-trainer" ] ||
    { echo "FAIL netns-test: build first (make)"; exit 1; }

prefix=cmt$$
declare -A ns=([fm]=$prefix-fm [comp]=$prefix-comp [tr]=$prefix-tr [sw]=$prefix-sw)
declare -A addr=([fm]=10.231.7.1 [comp]=10.231.7.2 [tr]=10.231.7.10)
work=$(mktemp -d "${TMPDIR:-/tmp}/committee-netns.XXXXXX")
pids=()

cleanup() {
    local status=$? pid name
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for name in "${ns[@]}"; do
        # anything still running in the namespace (ours: the namespace is ours)
        for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$name" 2>/dev/null || true
    done
    if [ "${NETNS_KEEP:-0}" = 1 ]; then echo "netns-test: logs kept in $work" >&2; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'echo "FAIL netns-test: interrupted"; exit 130' INT
trap 'echo "FAIL netns-test: terminated"; exit 143' TERM

failures=0
fail() {
    echo "FAIL netns-test: $*"
    failures=$((failures + 1))
}
ok() { echo "ok   netns-test: $*"; }
die() {
    echo "FAIL netns-test: $*"
    exit 1
}

# ------------------------------------------------------------------ network
say "creating namespaces ${ns[*]}"
for name in "${ns[@]}"; do ip netns add "$name" || die "ip netns add $name failed"; done
ip -n "${ns[sw]}" link add br0 type bridge
ip -n "${ns[sw]}" link set br0 up
for host in fm comp tr; do
    ip -n "${ns[sw]}" link add "p-$host" type veth peer name eth0 netns "${ns[$host]}"
    ip -n "${ns[sw]}" link set "p-$host" master br0 up
    ip -n "${ns[$host]}" addr add "${addr[$host]}/24" dev eth0
    ip -n "${ns[$host]}" link set eth0 up
    ip -n "${ns[$host]}" link set lo up
done
# The bridge forwards once its ports leave the listening state (no STP: at once).
for _ in $(seq 50); do
    ip netns exec "${ns[tr]}" ping -c 1 -W 1 "${addr[comp]}" >/dev/null 2>&1 && break
    command -v ping >/dev/null || break
    sleep 0.1
done

# ------------------------------------------------------------------ teachers
say "fitting two small teachers"
t=$(now)
"$bin/teacher-server" fit --view full --model vit:image=28x28,patch=7,dim=32,depth=1,heads=2,mlp=64 \
    --epochs 1 --max-train 20000 --lr 2e-3 --out "$work/fm.safetensors" >"$work/fm.fit.log" 2>&1 &
fit_fm=$!
"$bin/teacher-server" fit --view pool7 --model mlp:49-256-10 --epochs 2 --max-train 20000 \
    --out "$work/comp.safetensors" >"$work/comp.fit.log" 2>&1 ||
    die "fitting comp failed: $(tail -n 3 "$work/comp.fit.log")"
wait "$fit_fm" || die "fitting fm failed: $(tail -n 3 "$work/fm.fit.log")"
say "teachers fitted in $(($(now) - t)) s"

# HTTP status of GET /readyz on ADDRESS:9100, run inside namespace NS.
ready() { # NS ADDRESS
    ip netns exec "$1" timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/9100" || exit 1
        printf "GET /readyz HTTP/1.0\r\n\r\n" >&3; head -n 1 <&3' "$2" 2>/dev/null | grep -q ' 200'
}
for host in fm comp; do
    ip netns exec "${ns[$host]}" "$bin/teacher-server" serve --model "$work/$host.safetensors" \
        --name "$host" --max-train "$MAX_TRAIN" --bind "tcp://${addr[$host]}:5555" --http "${addr[$host]}:9100" --insecure-public \
        >"$work/$host.serve.log" 2>&1 &
    pids+=($!)
done
for host in fm comp; do
    for _ in $(seq 300); do ready "${ns[$host]}" "${addr[$host]}" && break; sleep 0.1; done
    ready "${ns[$host]}" "${addr[$host]}" ||
        die "teacher $host not ready on ${addr[$host]}: $(tail -n 3 "$work/$host.serve.log")"
    say "teacher $host ready on tcp://${addr[$host]}:5555 in namespace ${ns[$host]}"
done
# The trainer's namespace sees the teachers only through the bridge.
ready "${ns[tr]}" "${addr[comp]}" || die "the trainer namespace cannot reach comp through the bridge"

# ------------------------------------------------------------------ runs
epochs_done() { [ -f "$1" ] && { grep -c '"epoch"' "$1" || true; } || echo 0; } # not the config line

# Prints per epoch: comp requests, replies, down_events, skipped_batches, wait_seconds.
comp_table() {
    sed -n 's/.*"wait_seconds":\([0-9.]*\),.*"comp":{"requests":\([0-9]*\),"replies":\([0-9]*\),.*"down_events":\([0-9]*\),.*"skipped_batches":\([0-9]*\),.*/\2 \3 \4 \5 \1/p' "$1"
}

run() { # POLICY
    local policy=$1 metrics=$work/$1.jsonl log=$work/$1.log out=$work/$1.out
    local epochs=$EPOCHS
    [ "$policy" = skip ] && epochs=$SKIP_EPOCHS
    say "run '$policy': avg-kd, --cache off, $epochs epochs of $MAX_TRAIN examples, cut comp's link after epoch 2 for ${CUT_SECONDS}s"
    local t0 trainer cut_at restored_at code deadline
    t0=$(now)
    ip netns exec "${ns[tr]}" timeout 180 "$bin/student-trainer" train --view pool7 --model mlp:49-64-64-10 \
        --teacher "fm=tcp://${addr[fm]}:5555" --teacher "comp=tcp://${addr[comp]}:5555" \
        --method avg-kd --cache off --epochs "$epochs" --max-train "$MAX_TRAIN" \
        --on-teacher-failure "$policy" --teacher-timeout-ms 1000 \
        --out "$work/$policy.safetensors" --metrics "$metrics" >"$out" 2>"$log" &
    trainer=$!
    pids+=("$trainer")
    deadline=$(($(now) + 120))
    until [ "$(epochs_done "$metrics")" -ge 2 ]; do
        kill -0 "$trainer" 2>/dev/null || { fail "$policy: the trainer stopped early: $(tail -n 3 "$log")"; return; }
        [ "$(now)" -lt "$deadline" ] || { fail "$policy: no progress"; return; }
        sleep 0.1
    done
    cut_at=$(epochs_done "$metrics")
    say "$policy: cutting comp's link (ip -n ${ns[sw]} link set p-comp down) after epoch $cut_at"
    ip -n "${ns[sw]}" link set p-comp down
    sleep "$CUT_SECONDS" &
    wait $! # (a foreground sleep would hold off a signal's cleanup)
    ip -n "${ns[sw]}" link set p-comp up
    restored_at=$(epochs_done "$metrics")
    say "$policy: link restored after ${CUT_SECONDS}s (trainer at epoch $restored_at)"
    code=0
    wait "$trainer" || code=$?
    grep -E 'down|back|epoch|error' "$log" | sed "s/^/  [$policy] /" >&2 || true
    echo "  epoch comp: requests replies down_events skipped_batches | wait_seconds" >&2
    comp_table "$metrics" | awk '{ print "  " NR, $1, $2, $3, $4, "|", $5 }' >&2
    local accuracy down skipped wait_max replies_before replies_end
    accuracy=$(sed -n 's/^test_accuracy=\([0-9.]*\).*/\1/p' "$out")
    if [ "$code" -eq 0 ] && [ -n "$accuracy" ] && [ "$(epochs_done "$metrics")" -eq "$epochs" ]; then
        ok "$policy: the trainer finished all $epochs epochs (test_accuracy=$accuracy, $(($(now) - t0))s)"
    else
        fail "$policy: the trainer did not finish (exit $code${accuracy:+, accuracy $accuracy}): $(tail -n 2 "$log")"
        return
    fi
    down=$(comp_table "$metrics" | awk '{ if ($3 > m) m = $3 } END { print m + 0 }')
    skipped=$(comp_table "$metrics" | awk '{ s += $4 } END { print s + 0 }')
    wait_max=$(comp_table "$metrics" | awk '{ if ($5 > m) m = $5 } END { print m + 0 }')
    # comp's replies by the end of the epoch that was running when the link came
    # back: more by the end of the run means comp answered after the restore.
    replies_before=$(comp_table "$metrics" | awk -v e="$((restored_at + 1))" 'NR == e { print $2 }')
    replies_end=$(comp_table "$metrics" | awk 'END { print $2 + 0 }')
    [ "$down" -ge 1 ] && ok "$policy: comp.down_events=$down" || fail "$policy: the cut went unnoticed (down_events=0)"
    if [ "$policy" = wait ]; then
        [ "$skipped" -eq 0 ] && ok "$policy: no batch trained without comp" ||
            fail "$policy: $skipped batches trained without comp under 'wait'"
        awk -v w="$wait_max" 'BEGIN { exit !(w >= 2) }' && ok "$policy: blocked ${wait_max}s in one epoch waiting for comp" ||
            fail "$policy: the trainer did not wait for comp (max wait_seconds $wait_max)"
    else
        [ "$skipped" -gt 0 ] && ok "$policy: $skipped batches trained without comp" ||
            fail "$policy: no batch was skipped while comp was cut off"
    fi
    if [ -n "$replies_before" ] && [ "$replies_end" -gt "$replies_before" ]; then
        ok "$policy: comp used again after the restore (replies $replies_before -> $replies_end)"
    elif [ -z "$replies_before" ] || [ "$((restored_at + 1))" -ge "$epochs" ]; then
        fail "$policy: the trainer finished too soon after the link came back; lengthen the run"
    else
        fail "$policy: comp not used after the restore (replies stuck at $replies_end)"
    fi
}

run wait
run skip

total=$(($(now) - t_start))
if [ "$failures" -eq 0 ]; then
    echo "PASS netns-test: teachers on 10.231.7.1/.2, trainer on 10.231.7.10; link cut survived under wait and skip (${total}s)"
else
    echo "FAIL netns-test: $failures check(s) failed (${total}s)"
    exit 1
fi
