#!/bin/sh
# The builder stage's steps (both Dockerfiles), on any Debian/Ubuntu-like base with
# Python >= 3.10: `base` makes the venv with torch and a static tini for the final stage;
# `project` adds gpu-worker (a change to it rebuilds from there, torch stays cached).
# What the building machine gives (docker/build.py serves it over loopback at
# BUILD_INPUTS_URL: pip.conf, ca.pem, apt-mirror) lives in a temporary
# folder for the step that reads it and is gone when the step ends: no layer keeps it.
set -eu
for name in BUILD_INPUTS_URL TORCH_INDEX_URL; do
    eval "[ -n \"\${$name:-}\" ] || unset $name"     # an empty build argument means unset
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "gpu-worker needs Python >= 3.10; this base has $(python3 -V 2>&1)" >&2; exit 1; }

inputs=$(mktemp -d)
trap 'rm -rf "$inputs"' EXIT
fetch() {   # fetch NAME: the input into $inputs/NAME; false if the build gave none
    [ -n "${BUILD_INPUTS_URL:-}" ] && python3 -c 'import sys, urllib.error, urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=30).read()
except urllib.error.HTTPError:
    sys.exit(1)
open(sys.argv[2], "wb").write(body)' "$BUILD_INPUTS_URL/$1" "$inputs/$1"
}
if fetch pip.conf; then
    export PIP_CONFIG_FILE="$inputs/pip.conf"
fi
ca=""
if fetch ca.pem; then
    # The base's own CAs plus the ones passed in: a full bundle or only the extra CA works.
    ca="$inputs/bundle.pem"
    cat /etc/ssl/certs/ca-certificates.crt "$inputs/ca.pem" >"$ca" 2>/dev/null \
        || cp "$inputs/ca.pem" "$ca"
    export PIP_CERT="$ca"
fi
apt() { apt-get ${ca:+-o Acquire::https::CAInfo="$ca"} -q "$@"; }

if [ "${1:-}" = project ]; then
    /opt/venv/bin/pip install "/src[examples]"
    if [ "${WITH_TRITON:-true}" = false ]; then
        # triton serves torch.compile and custom kernels only; torch imports without it.
        /opt/venv/bin/pip uninstall -y -q triton
    fi
    exit 0
fi
if fetch apt-mirror; then           # the building machine's mirror, in this stage only
    mirror=$(cat "$inputs/apt-mirror")
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [ -f "$f" ] && sed -i "s#https\?://deb.debian.org/debian#$mirror#g" "$f"
    done
fi
apt update >/dev/null
packages=tini
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
    || packages="$packages python3-venv"
DEBIAN_FRONTEND=noninteractive apt install -y --no-install-recommends $packages >/dev/null
cp /usr/bin/tini-static /tini

python3 -m venv /opt/venv
export PATH=/opt/venv/bin:$PATH
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # torch from its own index only (no pip.conf: its wheelhouse's other build of the same
    # version must not win: a local version such as +cpu sorts above PyPI's CUDA build).
    PIP_CONFIG_FILE=/dev/null pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
else
    pip install "torch==${TORCH_VERSION}"
fi
