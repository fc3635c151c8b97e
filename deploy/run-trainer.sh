#!/bin/sh
# Runs the student trainer on this host from an environment file.
#
#   deploy/run-trainer.sh [FILE] [extra `student-trainer train` options]
#
# FILE (default /etc/committee/trainer.env; COMMITTEE_ETC overrides
# /etc/committee) holds KEY=VALUE lines, one COMMITTEE_<OPTION> per option of
# `student-trainer train --help`, e.g. COMMITTEE_TEACHER=fm=tcp://10.0.0.5:5555,comp=tcp://10.0.0.6:5555
# (the same file works as a systemd EnvironmentFile=, see
# deploy/systemd/trainer.env.example). The binary is
# $COMMITTEE_BIN_DIR/student-trainer, else student-trainer on PATH, else this
# checkout's build/bin/student-trainer. It is exec'd: SIGTERM makes it save
# its state (continue later with COMMITTEE_RESUME=1 or --resume) and its exit
# status is the script's.
set -eu

die() { echo "run-trainer: $*" >&2; exit 2; }
env_file=${COMMITTEE_ETC:-/etc/committee}/trainer.env
case "${1:-}" in
-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
-* | "") ;;
*) env_file=$1; shift ;;
esac
[ -r "$env_file" ] || die "cannot read $env_file"

set -a # every assignment in the file is exported to the trainer
# shellcheck disable=SC1090
. "$env_file"
set +a
[ -n "${COMMITTEE_TEACHER:-}" ] || die "$env_file sets no COMMITTEE_TEACHER (NAME=tcp://HOST:PORT,...)"
for required in COMMITTEE_MODEL COMMITTEE_OUT; do
    eval "value=\${$required:-}"
    [ -n "$value" ] || die "$env_file sets no $required"
done
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

if [ -n "${COMMITTEE_BIN_DIR:-}" ]; then
    trainer=$COMMITTEE_BIN_DIR/student-trainer
elif command -v student-trainer >/dev/null 2>&1; then
    trainer=$(command -v student-trainer)
else
    trainer=$(cd "$(dirname "$0")/.." && pwd)/build/bin/student-trainer
fi
[ -x "$trainer" ] || die "no student-trainer at $trainer (build with make, or set COMMITTEE_BIN_DIR)"
echo "run-trainer: $trainer train (env $env_file: teachers $COMMITTEE_TEACHER, out $COMMITTEE_OUT)" >&2
exec "$trainer" train "$@"
