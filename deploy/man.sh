#!/bin/sh
# Writes the man pages teacher-server.1 and student-trainer.1 into OUT_DIR from the
# binaries' own --help and --version (so a page never disagrees with its program):
#   deploy/man.sh BIN_DIR OUT_DIR
# Each page: NAME, SYNOPSIS and DESCRIPTION from `PROGRAM --help`, then one section per
# command with that command's --help, verbatim.
set -eu
bin=$1 out=$2
mkdir -p "$out"

# roff-safe verbatim text: backslashes doubled, a leading . or ' escaped.
verbatim() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

page() { # PROGRAM SUMMARY COMMAND...
    program=$1 summary=$2
    shift 2
    version=$("$bin/$program" --version)
    tmp="$out/$program.1.tmp"
    {
        printf '.TH %s 1 "" "%s" "committee"\n' "$(echo "$program" | tr a-z A-Z)" "$version"
        printf '.SH NAME\n%s \\- %s\n' "$program" "$summary"
        printf '.SH SYNOPSIS\n.B %s\nCOMMAND [options]\n' "$program"
        printf '.SH DESCRIPTION\n.nf\n'
        "$bin/$program" --help | verbatim
        printf '.fi\n'
        for command in "$@"; do
            printf '.SH "%s %s"\n.nf\n' "$(echo "$program" | tr a-z A-Z)" "$(echo "$command" | tr a-z A-Z)"
            "$bin/$program" $command --help | verbatim
            printf '.fi\n'
        done
        printf '.SH VERSION\n%s\n' "$version"
        printf '.SH SEE ALSO\nREADME.md and docs/ in share/doc/committee\n'
    } >"$tmp"
    mv "$tmp" "$out/$program.1"
}

page teacher-server "train and serve the frozen teachers of a committee" \
    fit serve query "data" inspect keygen
page student-trainer "distil a committee of teachers into a small student" \
    train replay eval keygen
