#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command, on a bare NVIDIA machine
# with no network; under 8 minutes (check.py keeps each step to a share of 450 s).
#
# It runs on the machine's own Python, with its CUDA torch when it has one (GPU_CHECK_PYTHON
# picks another). Packages that Python lacks come from the wheels in .whl-gpu/, which
# `make gpu-wheels` downloads beforehand where there is a network (about 3.4 MB); nothing
# is installed into the machine's Python: they go to a folder of their own on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="${GPU_WHEELS_DIR:-.whl-gpu}"

PY="${GPU_CHECK_PYTHON:-}"
if [ -z "$PY" ]; then            # the first Python that has torch, else any
  for c in python3 .venv/bin/python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then
      PY="$c"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

SITE="${TMPDIR:-/tmp}/gpu-worker-check-site"
rm -rf "$SITE" && mkdir -p "$SITE"
missing=()
# A wheel is installed when its package is missing, or older than the wheel, here.
older='
import importlib.metadata as m, sys
try:
    have = m.version(sys.argv[1])
except m.PackageNotFoundError:
    sys.exit(0)
try:
    from packaging.version import Version
    sys.exit(0 if Version(have) < Version(sys.argv[2]) else 1)
except ImportError:
    sys.exit(0 if have != sys.argv[2] else 1)
'
for whl in "$WHEELS"/*.whl; do
  [ -e "$whl" ] || continue
  name="$(basename "$whl")"
  if "$PY" -c "$older" "$(echo "$name" | cut -d- -f1)" "$(echo "$name" | cut -d- -f2)" \
       >/dev/null 2>&1; then
    missing+=("$whl")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "gpu-check: installing into $SITE: $(for w in "${missing[@]}"; do basename "$w"; done | cut -d- -f1 | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${missing[@]}" \
    || echo "CHECK wheels: FAIL  pip could not install them"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout -k 10 470 "$PY" gpu_tests/check.py
