#!/usr/bin/env bash
# prepare.sh DIR: the MovieLens dataset folder in DIR, made once (make movielens).
#
#   1. exports Debian's r-cran-dslabs ratings with export.R into DIR.export/movielens.csv
#      (unless that file exists);
#   2. converts them with convert.py into DIR (unless DIR/dataset.json exists;
#      MOVIELENS_REBUILD=1 converts again; MOVIELENS_ARGS adds convert.py options,
#      e.g. "--users 50");
#   3. checks the folder with `teacher-server data check` (BIN: the binaries).
# The data are GroupLens's: they stay on this machine, under DIR; never commit them.
set -euo pipefail
[ $# -eq 1 ] || {
    echo "usage: prepare.sh DIR" >&2
    exit 2
}
here=$(cd "$(dirname "$0")" && pwd)
dir=$1
bin=${BIN:-$here/../../build/bin}
python=${PYTHON:-/usr/bin/python3}
csv=$dir.export/movielens.csv
command -v Rscript >/dev/null || {
    echo "prepare.sh: Rscript is missing: apt-get install r-base-core r-cran-dslabs" >&2
    exit 1
}
if [ ! -f "$csv" ]; then
    Rscript "$here/export.R" "$dir.export"
fi
if [ ! -f "$dir/dataset.json" ] || [ "${MOVIELENS_REBUILD:-0}" = 1 ]; then
    # shellcheck disable=SC2086 # MOVIELENS_ARGS is a list of options
    "$python" "$here/convert.py" --csv "$csv" --out "$dir" ${MOVIELENS_ARGS:-}
fi
"$bin/teacher-server" data check "$dir"
