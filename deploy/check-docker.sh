#!/usr/bin/env bash
# make check-docker: deploy/docker-compose.yml end to end, for real.
#
#   1. builds the images (deploy/build-image.sh: base if missing, committee:latest);
#   2. scenario "end to end": `up` fits a small committee into the models
#      volume, starts both teachers, the trainer starts once both are healthy
#      (/readyz) and distills a student; its reported test accuracy must
#      reach $CHECK_MIN_ACCURACY, and the compose Prometheus must have scraped
#      both teachers (up);
#   3. scenario "teacher restart": a second trainer (ca-mkd, which asks both
#      teachers, --cache off so every epoch asks again, --on-teacher-failure
#      skip) runs while the `comp` container is stopped after epoch 2 and
#      started again two epochs later. It must: finish (exit 0); be scraped
#      by Prometheus while it runs (its HTTP API answers the trainer's
#      committee_trainer_steps_total > 0); see the teacher go down
#      (comp.down_events >= 1); follow `skip` (it keeps training,
#      comp.skipped_batches > 0 in some epoch); use comp again after
#      the restart (comp.replies keep growing, and the last epoch skipped
#      nothing);
#   4. scenario "crash": the fm server process is SIGKILLed from the host (a
#      crash, unlike `docker stop`, which restart policies ignore); its
#      `restart: unless-stopped` must bring it back healthy;
#   5. tears everything down (containers, network, volumes), however it ends.
#
# Runs under its own compose project name, so it never touches another
# project's containers or volumes. If no Docker engine answers (or there is
# no compose), it prints SKIP and exits 0: CI runs it only where Docker works.
# Exit status: 0 PASS or SKIP, 1 FAIL.
#
# Environment: CHECK_MIN_ACCURACY (0.70), CHECK_DOCKER_BUILD=0 (use the
# existing committee:latest), COMMITTEE_IMAGE (committee:latest).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
compose_file=$here/docker-compose.yml
min_accuracy=${CHECK_MIN_ACCURACY:-0.70}
project=committee-check-$$
image=${COMMITTEE_IMAGE:-committee:latest}
export COMMITTEE_IMAGE=$image
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-0} # the host port of Prometheus's UI: any free one

say() { printf '== check-docker: %s\n' "$*" >&2; }
now() { date +%s; }
t_start=$(now)

if ! command -v docker >/dev/null || ! timeout 20 docker info >/dev/null 2>&1; then
    echo "SKIP check-docker: no Docker engine answers here ('docker info' failed)"
    exit 0
fi
if command -v docker-compose >/dev/null; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "SKIP check-docker: neither docker-compose nor 'docker compose' is installed"
    exit 0
fi
dc() { "${compose[@]}" -p "$project" -f "$compose_file" "$@"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/committee-check-docker.XXXXXX")
failures=0
teardown() {
    local status=$?
    trap - EXIT INT TERM
    say "tearing down project $project"
    dc down -v --remove-orphans -t 15 >"$work/down.log" 2>&1 ||
        { cat "$work/down.log" >&2; echo "check-docker: teardown failed" >&2; }
    rm -rf "$work"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL check-docker: $*"
    failures=$((failures + 1))
}
ok() { echo "ok   check-docker: $*"; }

# container id of a service (also when it has exited)
cid() { dc ps -a -q "$1" 2>/dev/null | head -n 1; }
# state of a container: "running 0", "exited 0", ...
state() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$1" 2>/dev/null || echo "missing -"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" 2>/dev/null || echo missing; }
# number of epochs the trainer has logged
epochs_done() { dc logs --no-color trainer 2>/dev/null | grep -c 'student-trainer info: epoch [0-9]*/' || true; }

# Waits (up to $2 s) for the trainer container to exit; prints its exit code.
wait_trainer() {
    local deadline=$(($(now) + $1)) id st
    while :; do
        id=$(cid trainer)
        st=$(state "${id:-none}")
        case "$st" in exited*) echo "${st#exited }"; return 0 ;; esac
        [ "$(now)" -lt "$deadline" ] || { echo timeout; return 0; }
        sleep 2
    done
}

# Copies /data/NAME out of the (possibly exited) trainer container.
fetch() { docker cp "$(cid trainer):/data/$1" "$work/$1" 2>/dev/null; }

# ------------------------------------------------------------------ images
if [ "${CHECK_DOCKER_BUILD:-1}" != 0 ]; then
    say "building the images (deploy/build-image.sh)"
    t=$(now)
    "$here/build-image.sh" --tag "$image" >"$work/build.log" 2>&1 ||
        { tail -n 30 "$work/build.log" >&2; echo "FAIL check-docker: image build failed"; exit 1; }
    say "images built in $(($(now) - t)) s"
fi
docker image inspect "$image" >/dev/null 2>&1 || { echo "FAIL check-docker: no image $image"; exit 1; }

# ------------------------------------------------------------------ scenario 1
# A small committee and a short run: a few minutes on two cores.
export FM_EPOCHS=${CHECK_FM_EPOCHS:-2} COMP_EPOCHS=${CHECK_COMP_EPOCHS:-4}
export STUDENT=student METHOD=kd KD_TEACHER=comp STUDENT_EPOCHS=8 LABEL_FRACTION=0.1
export ON_TEACHER_FAILURE=wait CACHE=memory TEACHER_TIMEOUT_MS=10000 MAX_TRAIN=0
say "scenario 1: fit (fm $FM_EPOCHS epochs, comp $COMP_EPOCHS), serve, distill ($METHOD, $STUDENT_EPOCHS epochs)"
t1=$(now)
# `up -d` returns once fit has succeeded, both teachers are healthy and the
# trainer has been started (compose waits for the depends_on conditions).
if ! timeout 900 "${compose[@]}" -p "$project" -f "$compose_file" up -d >"$work/up1.log" 2>&1; then
    cat "$work/up1.log" >&2
    dc logs --no-color --tail 20 >&2 || true
    echo "FAIL check-docker: docker-compose up failed"
    exit 1
fi
say "fit done and teachers healthy after $(($(now) - t1)) s: fm $(health "$(cid fm)"), comp $(health "$(cid comp)")"
# Prometheus (the compose service) must scrape the trainer while it runs: ask its
# HTTP API from inside its container (bash's /dev/tcp; no port is needed).
prom_query() { # PROMQL -> the JSON answer
    local query
    query=$("${PYTHON:-/usr/bin/python3}" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")
    docker exec "$(cid prometheus)" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9090 &&
        printf "GET /api/v1/query?query=%s HTTP/1.0\r\n\r\n" "$1" >&3 && sed "1,/^\r*$/d" <&3' _ "$query" 2>/dev/null
}
prom_value() { sed -n 's/.*"value":\[[0-9.]*,"\([0-9.e+]*\)"\].*/\1/p' | head -n 1; }
# Asks Prometheus every second while the trainer runs; prints the first steps > 0 it answers.
steps_while_running() {
    local deadline=$(($(now) + 600)) value
    while [ "$(now)" -lt "$deadline" ]; do
        case "$(state "$(cid trainer)")" in running*) ;; *) return 0 ;; esac
        value=$(prom_query 'committee_trainer_steps_total{job="trainer"}' | prom_value)
        if [ -n "$value" ] && awk -v s="$value" 'BEGIN { exit !(s > 0) }'; then
            echo "$value"
            return 0
        fi
        sleep 1
    done
}
code=$(wait_trainer 600)
dc logs --no-color trainer >"$work/trainer1.log" 2>&1 || true
sed 's/^/  [trainer] /' "$work/trainer1.log" | grep -E 'epoch|test_accuracy|warn|error' >&2 || true
scenario1_seconds=$(($(now) - t1))
accuracy=$(sed -n 's/.*test_accuracy=\([0-9.]*\).*/\1/p' "$work/trainer1.log" | tail -n 1)
if [ "$code" != 0 ]; then
    fail "scenario 1: the trainer exited with $code"
elif [ -z "$accuracy" ]; then
    fail "scenario 1: the trainer printed no test_accuracy"
elif awk -v a="$accuracy" -v m="$min_accuracy" 'BEGIN { exit !(a >= m) }'; then
    ok "scenario 1: distilled student test_accuracy=$accuracy >= $min_accuracy (${scenario1_seconds}s)"
else
    fail "scenario 1: test_accuracy=$accuracy below $min_accuracy"
fi
if fetch student.jsonl && [ "$(grep -c '"epoch"' "$work/student.jsonl")" -eq "$STUDENT_EPOCHS" ]; then
    ok "scenario 1: metrics volume holds student.jsonl with $STUDENT_EPOCHS epochs"
else
    fail "scenario 1: student.jsonl missing or short in the runs volume"
fi

# Its first scrape can come after this short run: ask again for up to a minute.
deadline=$(($(now) + 60))
until teachers_up=$(prom_query 'sum(max_over_time(up{job="teachers"}[15m]))' | prom_value) &&
    [ "${teachers_up:-0}" = 2 ] || [ "$(now)" -ge "$deadline" ]; do sleep 1; done
[ "${teachers_up:-0}" = 2 ] && ok "scenario 1: Prometheus scraped both teachers" ||
    fail "scenario 1: Prometheus saw ${teachers_up:-0} of 2 teachers up within a minute"

# ------------------------------------------------------------------ scenario 2
export STUDENT=failover METHOD=ca-mkd STUDENT_EPOCHS=14 CACHE=off
export ON_TEACHER_FAILURE=skip TEACHER_TIMEOUT_MS=2000
say "scenario 2: $METHOD, --cache off, --on-teacher-failure skip; stop comp after epoch 2, start it after epoch 4"
t2=$(now)
dc up -d --no-deps trainer >"$work/up2.log" 2>&1 || { cat "$work/up2.log" >&2; echo "FAIL check-docker: restarting the trainer failed"; exit 1; }
deadline=$(($(now) + 300))
until [ "$(epochs_done)" -ge 2 ]; do
    [ "$(now)" -lt "$deadline" ] || { echo "FAIL check-docker: scenario 2: the trainer made no progress"; exit 1; }
    case "$(state "$(cid trainer)")" in exited*) echo "FAIL check-docker: scenario 2: the trainer exited early"; dc logs --no-color trainer | tail -n 20; exit 1 ;; esac
    sleep 1
done
# The trainer runs a minute here (scenario 1's is over in seconds): Prometheus must answer
# its steps while it trains.
steps_live=$(steps_while_running)
if [ -n "$steps_live" ]; then
    ok "scenario 2: Prometheus scraped the running trainer (committee_trainer_steps_total $steps_live, asked through its HTTP API during the run)"
else
    fail "scenario 2: Prometheus had no committee_trainer_steps_total of the running trainer (last answer: $(prom_query 'committee_trainer_steps_total' | head -c 300))"
fi
say "stopping comp (after epoch $(epochs_done))"
dc stop -t 15 comp >/dev/null 2>&1
stopped_at=$(epochs_done)
deadline=$(($(now) + 120))
until [ "$(epochs_done)" -ge $((stopped_at + 2)) ] || [ "$(now)" -ge "$deadline" ]; do sleep 1; done
say "starting comp again (after epoch $(epochs_done))"
dc start comp >/dev/null 2>&1
started_at=$(epochs_done)
deadline=$(($(now) + 90))
until [ "$(health "$(cid comp)")" = healthy ] || [ "$(now)" -ge "$deadline" ]; do sleep 1; done
say "comp is $(health "$(cid comp)") again (trainer at epoch $(epochs_done))"
code=$(wait_trainer 600)
dc logs --no-color trainer >"$work/trainer2.log" 2>&1 || true
sed 's/^/  [trainer] /' "$work/trainer2.log" | grep -E 'epoch|test_accuracy|warn|error' >&2 || true
scenario2_seconds=$(($(now) - t2))
accuracy2=$(sed -n 's/.*test_accuracy=\([0-9.]*\).*/\1/p' "$work/trainer2.log" | tail -n 1)
if [ "$code" = 0 ] && [ -n "$accuracy2" ]; then
    ok "scenario 2: the trainer finished (test_accuracy=$accuracy2, ${scenario2_seconds}s)"
else
    fail "scenario 2: the trainer did not finish cleanly (exit $code)"
fi
if fetch failover.jsonl; then
    # Per epoch: comp's cumulative replies and down events, and this epoch's skipped batches.
    sed -n 's/.*"comp":{"requests":\([0-9]*\),"replies":\([0-9]*\),.*"down_events":\([0-9]*\),.*"skipped_batches":\([0-9]*\),.*/\1 \2 \3 \4/p' \
        "$work/failover.jsonl" >"$work/comp.txt"
    echo "  epoch requests replies down_events skipped_batches (comp)" >&2
    awk '{ print "  " NR, $0 }' "$work/comp.txt" >&2
    down=$(awk '{ if ($3 > m) m = $3 } END { print m + 0 }' "$work/comp.txt")
    skipped=$(awk '{ s += $4 } END { print s + 0 }' "$work/comp.txt")
    last_skipped=$(awk 'END { print $4 + 0 }' "$work/comp.txt")
    # comp's replies by the end of the epoch that was running when comp came
    # back: more by the end of the run means comp answered after the restart.
    replies_before=$(awk -v e="$((started_at + 1))" 'NR == e { print $2 }' "$work/comp.txt")
    replies_end=$(awk 'END { print $2 + 0 }' "$work/comp.txt")
    [ "$down" -ge 1 ] && ok "scenario 2: comp.down_events=$down" ||
        fail "scenario 2: comp.down_events=$down, the stop went unnoticed"
    [ "$skipped" -gt 0 ] && ok "scenario 2: policy skip: $skipped batches trained without comp" ||
        fail "scenario 2: no batch was skipped while comp was stopped"
    if [ -n "$replies_before" ] && [ "$((started_at + 1))" -lt "$STUDENT_EPOCHS" ] &&
        [ "$replies_end" -gt "$replies_before" ] && [ "$last_skipped" -eq 0 ]; then
        ok "scenario 2: comp used again after its restart (replies $replies_before -> $replies_end, last epoch skipped 0)"
    else
        fail "scenario 2: comp not used again after the restart (replies ${replies_before:-?} -> $replies_end, last epoch skipped $last_skipped)"
    fi
else
    fail "scenario 2: failover.jsonl missing in the runs volume"
fi

# ------------------------------------------------------------------ scenario 3
# `docker stop`/`docker kill` count as manual stops, which restart policies
# ignore; a crash is the server process dying on its own, so kill it from the
# host by its PID (needs the engine's PID namespace: root, not rootless).
say "scenario 3: crash fm's server process (SIGKILL by host PID); restart: unless-stopped must bring it back healthy"
fm_id=$(cid fm)
fm_pid=$(docker inspect -f '{{.State.Pid}}' "$fm_id" 2>/dev/null || echo 0)
restarts_before=$(docker inspect -f '{{.RestartCount}}' "$fm_id")
if [ "$fm_pid" -gt 0 ] && kill -KILL "$fm_pid" 2>/dev/null; then
    t3=$(now)
    deadline=$(($(now) + 90))
    until [ "$(docker inspect -f '{{.RestartCount}}' "$fm_id")" -gt "$restarts_before" ] &&
        [ "$(health "$fm_id")" = healthy ]; do
        [ "$(now)" -lt "$deadline" ] || break
        sleep 1
    done
    if [ "$(docker inspect -f '{{.RestartCount}}' "$fm_id")" -gt "$restarts_before" ] && [ "$(health "$fm_id")" = healthy ]; then
        ok "scenario 3: fm restarted by its restart policy and healthy again after $(($(now) - t3)) s"
    else
        fail "scenario 3: fm was not restarted ($(state "$fm_id"), restarts $(docker inspect -f '{{.RestartCount}}' "$fm_id"), $(health "$fm_id"))"
    fi
else
    echo "skip check-docker: scenario 3: cannot signal the container's process from here (rootless engine?)"
fi

total=$(($(now) - t_start))
if [ "$failures" -eq 0 ]; then
    echo "PASS check-docker: end to end test_accuracy=$accuracy; teacher stop/start survived (skip); crashed teacher restarted; ${total}s"
else
    echo "FAIL check-docker: $failures check(s) failed; ${total}s"
    exit 1
fi
