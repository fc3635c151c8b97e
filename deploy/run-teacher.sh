#!/bin/sh
# Runs one teacher server on this host from an environment file.
#
#   deploy/run-teacher.sh FILE|NAME [extra `teacher-server serve` options]
#
# FILE holds KEY=VALUE lines, one COMMITTEE_<OPTION> per option of
# `teacher-server serve --help` (the same file works as a systemd
# EnvironmentFile=, see deploy/systemd/teacher.env.example). A bare NAME
# means /etc/committee/teacher-NAME.env (COMMITTEE_ETC overrides /etc/committee).
# The binary is $COMMITTEE_BIN_DIR/teacher-server, else teacher-server on
# PATH, else this checkout's build/bin/teacher-server. It is exec'd, so
# SIGTERM reaches it (graceful stop) and its exit status is the script's.
set -eu

die() { echo "run-teacher: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: run-teacher.sh FILE|NAME [teacher-server serve options]"
case "$1" in -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
env_file=$1
shift
case "$env_file" in
*/* | *.env) ;;
*) env_file=${COMMITTEE_ETC:-/etc/committee}/teacher-$env_file.env ;;
esac
[ -r "$env_file" ] || die "cannot read $env_file"

set -a # every assignment in the file is exported to the server
# shellcheck disable=SC1090
. "$env_file"
set +a
[ -n "${COMMITTEE_MODEL:-}" ] || die "$env_file sets no COMMITTEE_MODEL (the teacher checkpoint)"
# One OpenBLAS thread unless the file says otherwise (--threads / COMMITTEE_THREADS).
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

if [ -n "${COMMITTEE_BIN_DIR:-}" ]; then
    server=$COMMITTEE_BIN_DIR/teacher-server
elif command -v teacher-server >/dev/null 2>&1; then
    server=$(command -v teacher-server)
else
    server=$(cd "$(dirname "$0")/.." && pwd)/build/bin/teacher-server
fi
[ -x "$server" ] || die "no teacher-server at $server (build with make, or set COMMITTEE_BIN_DIR)"
echo "run-teacher: $server serve (env $env_file: model ${COMMITTEE_MODEL}, bind ${COMMITTEE_BIND:-default})" >&2
exec "$server" serve "$@"
