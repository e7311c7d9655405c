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
fetch() {   # fetch NAME: the input into $inputs/NAME; false if the build gave none (404)
    [ -n "${BUILD_INPUTS_URL:-}" ] || return 1
    python3 -c 'import sys, urllib.error, urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=30).read()
except urllib.error.HTTPError as exc:
    if exc.code == 404:
        sys.exit(1)
    sys.exit(f"the build input {sys.argv[1]} cannot be read: {exc}")
except OSError as exc:
    sys.exit(f"the build input {sys.argv[1]} cannot be read: {exc} (a build step must reach "
             "127.0.0.1 on the building machine: docker build --network host, no proxy)")
open(sys.argv[2], "wb").write(body)' "$BUILD_INPUTS_URL/$1" "$inputs/$1" || {
        rc=$?; [ $rc = 1 ] && return 1; exit $rc; }
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
apt_get() {
    DEBIAN_FRONTEND=noninteractive
    export DEBIAN_FRONTEND
    apt-get ${ca:+-o Acquire::https::CAInfo="$ca"} -q "$@"
}

if [ "${1:-}" = project ]; then
    /opt/venv/bin/pip install "/src[examples]"
    if [ "${WITH_TRITON:-true}" = false ]; then
        # triton serves torch.compile and custom kernels only; torch imports without it.
        /opt/venv/bin/pip uninstall -y -q triton
    fi
    exit 0
fi
if fetch apt-mirror; then
    # The building machine's mirror for Debian's main archive (not -security), for this
    # step only: the sources are put back before it ends.
    mirror=$(cat "$inputs/apt-mirror")
    cp -a /etc/apt "$inputs/apt-etc"
    trap 'rm -rf /etc/apt && cp -a "$inputs/apt-etc" /etc/apt; rm -rf "$inputs"' EXIT
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [ -f "$f" ] || continue
        python3 - "$f" "$mirror" <<'PY'
import re, sys
path, mirror = sys.argv[1], sys.argv[2]
text = open(path).read()
open(path, "w").write(re.sub(r"https?://deb\.debian\.org/debian(?=[\s/]|$)", lambda m: mirror, text))
PY
    done
fi
apt_get update >/dev/null
packages=tini
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
    || packages="$packages python3-venv"
apt_get install -y --no-install-recommends $packages >/dev/null
rm -rf /var/lib/apt/lists/*
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
