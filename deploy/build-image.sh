#!/bin/sh
# Builds the committee image (default tag committee:latest) from this
# repository, whatever the caller's working directory:
#   1. deploy/make-base-image.sh  (local bookworm base; skipped if it exists)
#   2. docker build -f deploy/Dockerfile  with the repository root as context
#   3. docker build -f deploy/Dockerfile.prometheus  (committee-prometheus:latest,
#      the compose demo's Prometheus; COMMITTEE_PROMETHEUS_IMAGE names it)
#
#   deploy/build-image.sh [--tag NAME] [--force-base] [-- DOCKER_BUILD_ARGS...]
#
# The context is sent as a tar filtered with deploy/Dockerfile.dockerignore,
# so build/, build-asan/ and .git stay out with the classic builder too
# (which only reads a .dockerignore at the context root).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tag=${COMMITTEE_IMAGE:-committee:latest}
base=${COMMITTEE_BASE_IMAGE:-committee/bookworm-base:latest}
base_args=""
while [ $# -gt 0 ]; do
    case "$1" in
    --tag) [ $# -ge 2 ] || { echo "build-image: --tag needs a value" >&2; exit 2; }
        tag=$2; shift ;;
    --tag=*) tag=${1#--tag=} ;;
    --force-base) base_args="--force" ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "build-image: unknown argument: $1 (docker build arguments go after --)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "build-image: $*" >&2; }

t0=$(date +%s)
# shellcheck disable=SC2086
"$here/make-base-image.sh" --tag "$base" $base_args
t1=$(date +%s)

# Turn the dockerignore patterns into tar excludes: "**/x" matches at any
# depth, anything else is relative to the repository root.
excludes=$(mktemp "${TMPDIR:-/tmp}/committee-excludes.XXXXXX")
trap 'rm -f "$excludes"' EXIT
sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$here/Dockerfile.dockerignore" |
    awk 'NF && !/^!/ { sub(/^\/+/, ""); sub(/\/+$/, "");
                       if (sub(/^\*\*\//, "")) print; else print "./" $0 }' >"$excludes"

say "docker build -f deploy/Dockerfile -t $tag (context: $root)"
tar -C "$root" --exclude-from="$excludes" -cf - . |
    docker build --force-rm -f deploy/Dockerfile --build-arg "BASE_IMAGE=$base" -t "$tag" "$@" - ||
    { say "docker build of $tag failed"; exit 1; }
t2=$(date +%s)

prometheus=${COMMITTEE_PROMETHEUS_IMAGE:-committee-prometheus:latest}
say "docker build -f deploy/Dockerfile.prometheus -t $prometheus (Debian's prometheus package)"
tar -C "$here" -cf - Dockerfile.prometheus prometheus.yml |
    docker build --force-rm -f Dockerfile.prometheus --build-arg "BASE_IMAGE=$base" -t "$prometheus" - ||
    { say "docker build of $prometheus failed"; exit 1; }
t3=$(date +%s)

say "base image: $((t1 - t0))s, committee image: $((t2 - t1))s, prometheus image: $((t3 - t2))s"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
    awk -v a="$tag" -v b="$base" -v c="$prometheus" '$1 == a || $1 == b || $1 == c { print "build-image:   " $1 "  " $2 }' >&2
