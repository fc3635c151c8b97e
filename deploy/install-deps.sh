#!/bin/sh
# Installs the Debian packages of deploy/packages.txt that are missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -eu
here=$(dirname "$0")
missing=""
for package in $(grep -v '^#' "$here/packages.txt"); do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $package" ;;
    esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "committee: missing Debian packages; run as root:" >&2
    echo "  apt-get install -y$missing" >&2
    exit 1
fi
echo "committee: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing || { apt-get update -q && apt-get install -y -q $missing; }
