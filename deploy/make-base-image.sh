#!/bin/sh
# Builds the local Debian bookworm base image that deploy/Dockerfile starts
# from, without any image registry: debootstrap (--variant=minbase) makes a
# root filesystem from the Debian mirror this machine's apt already uses, and
# `docker import` turns it into an image.
#
#   deploy/make-base-image.sh [--force] [--tag NAME]
#
#   --force     rebuild even if the image already exists (default: skip)
#   --tag NAME  image tag (default: $COMMITTEE_BASE_IMAGE or
#               committee/bookworm-base:latest)
#
# Environment: COMMITTEE_MIRROR overrides the mirror read from apt's
# configuration; TMPDIR chooses where the temporary root filesystem goes.
# Must run as root (debootstrap, apt-get install debootstrap).
set -eu

suite=bookworm
tag=${COMMITTEE_BASE_IMAGE:-committee/bookworm-base:latest}
force=0
while [ $# -gt 0 ]; do
    case "$1" in
    --force) force=1 ;;
    --tag) [ $# -ge 2 ] || { echo "make-base-image: --tag needs a value" >&2; exit 2; }
        tag=$2; shift ;;
    --tag=*) tag=${1#--tag=} ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make-base-image: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "make-base-image: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the docker daemon"

if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag already exists ($(docker image inspect -f '{{.Id}}' "$tag" | cut -c1-19)); skipping (use --force to rebuild)"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap needs it)"

# --- the mirror, from apt's own configuration --------------------------------
# Prints "TYPE URI SUITE" for every enabled binary ("deb") source of Debian's
# main component, from deb822 *.sources files and one-line *.list files.
apt_sources() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && comps ~ /(^| )main( |$)/ && enabled != "no") {
                    n = split(uris, u, " "); m = split(suites, s, " ")
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print "deb", u[i], s[j]
                }
                types = uris = suites = comps = ""; enabled = "yes"
            }
            BEGIN { enabled = "yes" }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "components") comps = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENT...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '
            $1 == "deb" && NF >= 4 {
                for (i = 4; i <= NF; i++) if ($i == "main") { print "deb", $2, $3; break }
            }'
    done
}

first_uri_for() { # SUITE
    apt_sources | awk -v s="$1" '$3 == s { sub(/\/+$/, "", $2); print $2; exit }'
}

mirror=${COMMITTEE_MIRROR:-$(first_uri_for "$suite")}
[ -n "$mirror" ] || die "no 'deb ... $suite main' source in /etc/apt (set COMMITTEE_MIRROR)"
updates_mirror=$(first_uri_for "$suite-updates")
security_mirror=$(first_uri_for "$suite-security")
say "mirror: $mirror ($suite main)"
[ -n "$updates_mirror" ] && say "updates: $updates_mirror ($suite-updates)"
[ -n "$security_mirror" ] && say "security: $security_mirror ($suite-security)"

# --- debootstrap ---------------------------------------------------------------
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q debootstrap >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; } ||
        die "could not install debootstrap"
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/committee-base.XXXXXX")
rootfs=$work/rootfs
cleanup() {
    # debootstrap mounts proc/sys inside the target; never rm through a mount.
    if [ -d "$rootfs" ]; then
        awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
keyopt=""
[ -f "$keyring" ] && keyopt="--keyring=$keyring"
include=""
case "$mirror$updates_mirror$security_mirror" in
*https:*) include="--include=ca-certificates" ;;
esac

start=$(date +%s)
say "debootstrap --variant=minbase $suite into $rootfs"
# shellcheck disable=SC2086
if ! debootstrap --variant=minbase --components=main $keyopt $include \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
say "debootstrap done in $(($(date +%s) - start))s"

# --- apt inside the image: the same mirror, lean defaults ---------------------
say "writing apt sources and container defaults into the rootfs"
rm -f "$rootfs/etc/apt/sources.list"
{
    echo "# Written by committee deploy/make-base-image.sh from the build host's apt configuration."
    echo "Types: deb"
    echo "URIs: $mirror"
    if [ -n "$updates_mirror" ] && [ "$updates_mirror" = "$mirror" ]; then
        echo "Suites: $suite $suite-updates"
    else
        echo "Suites: $suite"
    fi
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ -n "$updates_mirror" ] && [ "$updates_mirror" != "$mirror" ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-updates\nComponents: main\n' "$updates_mirror" "$suite"
        echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
    if [ -n "$security_mirror" ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security_mirror" "$suite"
        echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"

# No recommends, no caches kept in layers, no daemons started by postinst.
cat >"$rootfs/etc/apt/apt.conf.d/90committee-container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
# Documentation, man pages and translations are not needed in a container
# (copyright files stay).
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90committee-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

# Trim what debootstrap left behind.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$rootfs/etc/machine-id"
say "rootfs size: $(du -sh --one-file-system "$rootfs" | cut -f1)"

# --- import ----------------------------------------------------------------------
say "docker import -> $tag"
tar --numeric-owner --xattrs -C "$rootfs" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
    docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "committee: debootstrap --variant=minbase $suite" \
        - "$tag" >/dev/null
say "built $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }') in $(($(date +%s) - start))s"
