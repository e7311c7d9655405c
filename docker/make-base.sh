#!/bin/sh
# Make a Debian base image from Debian's own packages, for machines that reach no image
# registry (an air-gapped cluster, a build host behind a proxy that only passes package
# mirrors). The mirror is read from this machine's apt sources at build time
# (DEBIAN_MIRROR overrides it); nothing of this machine goes into the repository.
#   docker/make-base.sh [TAG]        (default gpu-worker-base:bookworm)
set -eu
tag=${1:-gpu-worker-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    # The first apt source whose path ends in /debian (not -security, not a vendor's).
    DEBIAN_MIRROR=$(grep -rhoE '(^URIs:|^deb)[[:space:]]+[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | awk '{print $2}' | head -n 1)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
if ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "make-base: installing debootstrap (Debian's package)"
        apt-get install -y -q debootstrap >/dev/null || {
            apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
    fi
    command -v debootstrap >/dev/null || {
        echo "make-base: debootstrap is needed (apt-get install -y debootstrap)" >&2; exit 2; }
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "make-base: debootstrap $suite from $DEBIAN_MIRROR (python3, python3-venv, ca-certificates)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# The mirror was this machine's, for fetching: the image names Debian's own (a build's
# builder stage uses this machine's again, docker/builder.sh).
echo "deb http://deb.debian.org/debian $suite main" >"$root/etc/apt/sources.list"
# What an image needs no copy of: apt's downloaded lists and packages, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/tmp/* "$root"/var/log/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "make-base: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
