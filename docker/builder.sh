#!/bin/sh
# The builder stage's steps (both Dockerfiles), on any Debian/Ubuntu-like base with
# Python >= 3.10: `base` makes the venv with torch and a static tini for the final stage;
# `project` adds gpu-worker (a change to it rebuilds from there, torch stays cached).
# The CA bundle of the machine that builds (BUILD_CA_URL, served over loopback by
# docker/build.py) lives in a temporary file for this step only: no layer keeps it.
set -eu
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST BUILD_CA_URL \
        TORCH_INDEX_URL; do
    eval "[ -n \"\${$name:-}\" ] || unset $name"     # an empty build argument means unset
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "gpu-worker needs Python >= 3.10; this base has $(python3 -V 2>&1)" >&2; exit 1; }

ca=""
if [ -n "${BUILD_CA_URL:-}" ]; then
    ca=$(mktemp)
    trap 'rm -f "$ca"' EXIT
    # The base's own CAs plus the ones passed in: a full bundle or only the extra CA works.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cat /etc/ssl/certs/ca-certificates.crt >"$ca"
    fi
    python3 -c 'import sys, urllib.request
sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=30).read())' \
        "$BUILD_CA_URL" >>"$ca"
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
apt update >/dev/null
packages=tini
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
    || packages="$packages python3-venv"
DEBIAN_FRONTEND=noninteractive apt install -y --no-install-recommends $packages >/dev/null
cp /usr/bin/tini-static /tini

python3 -m venv /opt/venv
export PATH=/opt/venv/bin:$PATH
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # torch from its own index only: a wheelhouse's other build of the same version must
    # not win (a local version such as +cpu sorts above PyPI's CUDA build).
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL \
        pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
else
    pip install "torch==${TORCH_VERSION}"
fi
