#!/usr/bin/env bash
# make check-swarm: deploy/stack.yml on a single-node Docker Swarm, for real.
#
#   1. joins a swarm (docker swarm init, left again at the end) unless the
#      engine is in one already, and builds committee:latest (deploy/build-image.sh);
#   2. fits two small teachers on the host (build/bin/teacher-server) into a
#      temporary models folder;
#   3. deploys the stack with three replicas of `comp` and waits until all
#      three are healthy, then starts the trainer (kd from comp, --cache off so
#      every epoch asks the teachers, --on-teacher-failure wait);
#   4. after epoch 2 scales comp to one replica, two epochs later back to three;
#   5. checks: the trainer finished (its task Complete); exactly once: every
#      epoch trained each example once (distinct = train_examples, no
#      duplicates) and comp sent epochs x examples outputs, no batch skipped;
#      the trainer used every replica: each of the first three addresses and
#      at least one address that joined after the scale-up answered replies
#      (its per-endpoint counters, teachers.comp.endpoints in the metrics);
#   6. removes the stack, the swarm if it made one, and the folders.
#
# If no Docker engine answers, or it cannot run a swarm, it prints SKIP and
# exits 0.  Exit status: 0 PASS or SKIP, 1 FAIL.
#
# Environment: CHECK_SWARM_BUILD=0 (use the existing image), COMMITTEE_IMAGE
# (committee:latest), CHECK_SWARM_EPOCHS (40), CHECK_SWARM_TRAIN (20000),
# CHECK_SWARM_DELAY_MS (20: comp's --compute-delay-ms).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${COMMITTEE_BIN_DIR:-$root/build/bin}
image=${COMMITTEE_IMAGE:-committee:latest}
stack=committee-check-$$
epochs=${CHECK_SWARM_EPOCHS:-40}
examples=${CHECK_SWARM_TRAIN:-20000}
export COMMITTEE_IMAGE=$image

say() { printf '== check-swarm: %s\n' "$*" >&2; }
now() { date +%s; }
failures=0
fail() { echo "FAIL check-swarm: $*"; failures=$((failures + 1)); }
ok() { echo "ok   check-swarm: $*"; }
die() { echo "FAIL check-swarm: $*"; exit 1; }

if ! command -v docker >/dev/null || ! timeout 20 docker info >/dev/null 2>&1; then
    echo "SKIP check-swarm: no Docker engine answers here ('docker info' failed)"
    exit 0
fi
[ -x "$bin/teacher-server" ] || die "no $bin/teacher-server (run make first)"

work=$(mktemp -d "${TMPDIR:-/tmp}/committee-check-swarm.XXXXXX")
made_swarm=0
teardown() {
    local status=$?
    trap - EXIT INT TERM
    say "removing stack $stack"
    docker stack rm "$stack" >/dev/null 2>&1 || true
    # the network goes once the tasks are gone
    for _ in $(seq 1 30); do
        docker network ls --format '{{.Name}}' | grep -q "^${stack}_" || break
        sleep 1
    done
    if [ "$made_swarm" = 1 ]; then
        say "leaving the swarm this check made"
        docker swarm leave --force >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    say "docker swarm init (single node)"
    if ! docker swarm init --advertise-addr 127.0.0.1 >"$work/init.log" 2>&1; then
        sed 's/^/  /' "$work/init.log" >&2
        echo "SKIP check-swarm: this engine cannot start a swarm"
        exit 0
    fi
    made_swarm=1
fi

if [ "${CHECK_SWARM_BUILD:-1}" != 0 ]; then
    say "building the images (deploy/build-image.sh)"
    "$here/build-image.sh" --tag "$image" >"$work/build.log" 2>&1 ||
        { tail -n 30 "$work/build.log" >&2; die "image build failed"; }
fi
docker image inspect "$image" >/dev/null 2>&1 || die "no image $image"

# ------------------------------------------------------------------ teachers
mkdir -p "$work/models" "$work/runs"
chmod 0777 "$work/runs" # the image's user (uid 10001) writes the student there
say "fitting two small teachers on the host"
fit() { # NAME VIEW SPEC
    OPENBLAS_NUM_THREADS=1 "$bin/teacher-server" fit --view "$2" --model "$3" --epochs 1 \
        --max-train 5000 --out "$work/models/$1.safetensors" >"$work/fit-$1.log" 2>&1 ||
        { tail -n 5 "$work/fit-$1.log" >&2; die "fitting $1 failed"; }
}
fit fm full mlp:784-64-10
fit comp pool7 mlp:49-512-512-10
chmod 0644 "$work/models"/*.safetensors

export COMMITTEE_MODELS=$work/models COMMITTEE_RUNS=$work/runs
export FM_REPLICAS=1 COMP_REPLICAS=3 TRAINER_REPLICAS=0
export METHOD=kd KD_TEACHER=comp CACHE=off MAX_TRAIN=$examples STUDENT_EPOCHS=$epochs
export ON_TEACHER_FAILURE=wait TEACHER_TIMEOUT_MS=60000 STUDENT=swarm
# 20 ms before each forward pass of comp: an epoch then takes about a second with three
# replicas however fast the machine is, so the run outlasts the scale-down and scale-up.
export COMP_COMPUTE_DELAY_MS=${CHECK_SWARM_DELAY_MS:-20}
say "deploying stack $stack: fm x1, comp x3 (the trainer waits)"
docker stack deploy -c "$here/stack.yml" "$stack" >"$work/deploy.log" 2>&1 ||
    { cat "$work/deploy.log" >&2; die "docker stack deploy failed"; }

# healthy tasks of a service
healthy() {
    docker ps --filter "label=com.docker.swarm.service.name=${stack}_$1" \
        --filter health=healthy -q | wc -l
}
wait_healthy() { # SERVICE COUNT SECONDS
    local deadline=$(($(now) + $3))
    until [ "$(healthy "$1")" -eq "$2" ]; do
        [ "$(now)" -lt "$deadline" ] || {
            docker service ps --no-trunc "${stack}_$1" >&2 || true
            die "$1 did not reach $2 healthy replicas within $3 s (has $(healthy "$1"))"
        }
        sleep 1
    done
}
wait_healthy comp 3 180
wait_healthy fm 1 180
ok "three comp replicas and fm healthy"

metrics=$work/runs/swarm.jsonl
epochs_done() { [ -f "$metrics" ] && grep -c "^{\"epoch\"" "$metrics" || echo 0; }
trainer_state() { docker service ps --format '{{.CurrentState}}' "${stack}_trainer" 2>/dev/null | head -n 1; }
wait_epochs() { # N SECONDS
    local deadline=$(($(now) + $2))
    until [ "$(epochs_done)" -ge "$1" ]; do
        case "$(trainer_state)" in Complete* | Failed* | Rejected* | Shutdown*)
            docker service logs --no-task-ids "${stack}_trainer" 2>&1 | tail -n 20 >&2
            die "the trainer ended ($(trainer_state)) before epoch $1";;
        esac
        [ "$(now)" -lt "$deadline" ] || die "the trainer did not reach epoch $1 within $2 s"
        sleep 1
    done
}

say "starting the trainer: kd from comp=tcp://tasks.comp:5555, $epochs epochs of $examples examples"
docker service scale -d "${stack}_trainer=1" >/dev/null
wait_epochs 2 300
say "scaling comp to 1 (trainer at epoch $(epochs_done))"
docker service scale -d "${stack}_comp=1" >/dev/null
scaled_down=$(epochs_done)
wait_epochs $((scaled_down + 2)) 300
say "scaling comp back to 3 (trainer at epoch $(epochs_done))"
docker service scale -d "${stack}_comp=3" >/dev/null
scaled_up=$(epochs_done)

deadline=$(($(now) + 900))
while :; do
    case "$(trainer_state)" in Complete* | Failed* | Rejected*) break ;; esac
    [ "$(now)" -lt "$deadline" ] || die "the trainer did not finish within 900 s"
    sleep 2
done
docker service logs --no-task-ids "${stack}_trainer" >"$work/trainer.log" 2>&1 || true
grep -E 'replica|down|back|epoch [0-9]+/' "$work/trainer.log" | sed 's/^/  [trainer] /' >&2 || true

# ------------------------------------------------------------------ checks
state=$(trainer_state)
case "$state" in Complete*) ok "the trainer finished ($state)" ;; *) fail "the trainer ended $state" ;; esac
lines=$(epochs_done)
[ "$lines" -eq "$epochs" ] && ok "$lines epochs in the metrics" || fail "$lines epochs in the metrics, not $epochs"

report=$("${PYTHON:-/usr/bin/python3}" - "$metrics" "$examples" "$epochs" "$scaled_up" <<'EOF' 2>&1
import json, sys
path, examples, epochs, scaled_up = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(line) for line in open(path) if line.startswith('{"epoch"')]
problems = []
for row in rows:
    if row["distinct_examples"] != examples or row["duplicates"] != 0:
        problems.append("epoch %d trained %d distinct examples (%d duplicates), not %d once each"
                        % (row["epoch"], row["distinct_examples"], row["duplicates"], examples))
    if row["teachers"]["comp"]["skipped_batches"]:
        problems.append("epoch %d skipped %d batches of comp" % (row["epoch"], row["teachers"]["comp"]["skipped_batches"]))
last = rows[-1]["teachers"]["comp"]
if last["examples_received"] != epochs * examples:
    problems.append("comp sent %d outputs, not %d (epochs x examples)" % (last["examples_received"], epochs * examples))
seen = list(last["endpoints"].items())  # in the order the trainer first saw them
first = seen[:3]
at_scale_up = rows[scaled_up - 1]["teachers"]["comp"]["endpoints"] if scaled_up >= 1 else {}
joined = [(a, s) for a, s in seen if a not in at_scale_up]
print("replica replies: " + ", ".join("%s %d%s" % (a, s["replies"], "" if s["live"] else " (gone)") for a, s in seen))
if len(first) < 3 or any(s["replies"] == 0 for _, s in first):
    problems.append("the first three replicas did not all answer")
if not any(s["replies"] > 0 for _, s in joined):
    problems.append("no replica that joined after the scale-up answered (raise CHECK_SWARM_EPOCHS if the run ended first)")
for p in problems: print("PROBLEM " + p)
EOF
) || true
echo "$report" | grep -v '^PROBLEM' | sed 's/^/  /' >&2
if echo "$report" | grep -q '^PROBLEM'; then
    echo "$report" | sed -n 's/^PROBLEM //p' | while read -r line; do echo "FAIL check-swarm: $line"; done
    failures=$((failures + 1))
else
    ok "exactly once: every epoch trained all $examples examples once, comp sent $((epochs * examples)) outputs, nothing skipped"
    ok "the trainer used every replica, including ones that joined after the scale-up"
fi

if [ "$failures" -ne 0 ]; then
    echo "FAIL check-swarm: $failures check(s) failed"
    exit 1
fi
echo "PASS check-swarm"
