#!/usr/bin/env bash
# Everything that needs a GPU, in one go (target: under 8 minutes on one GPU):
# the gpu_tests, then the embeddings benchmark on the GPU. Run from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
make .venv/.installed >/dev/null || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
timeout 420 .venv/bin/python -m pytest -q -rs gpu_tests; tests=$?
timeout 180 .venv/bin/python bench/bench_embeddings.py --rounds 3; bench=$?
echo "gpu_tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
