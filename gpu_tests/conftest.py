"""GPU tests: collected everywhere, run only where they can.

Every test here needs an NVIDIA GPU that NVML sees; tests marked `torch_cuda` also need a
CUDA build of torch (a CPU build on a GPU machine skips them, it does not fail them).
Both are found without a CUDA context in the test process (NVML, and torch asked in a
subprocess), so the tests can assert that the parent never holds one.
"""
import functools
import subprocess
import sys

import pytest

# Nothing a test runs leaves loopback (tests/loopback_pytest.py), here as in tests/.
from tests.loopback_pytest import (loopback_only, pytest_sessionfinish,  # noqa: F401
                                   pytest_terminal_summary, pytest_unconfigure)


@functools.lru_cache(maxsize=None)
def gpu_count() -> tuple:
    """(devices NVML sees, why none)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no library, no driver
        return 0, f"no NVIDIA driver here (NVML: {exc})"
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    return count, "NVML sees no GPU"


@functools.lru_cache(maxsize=None)
def torch_cuda() -> tuple:
    """(torch is a CUDA build, what it is), asked in a subprocess."""
    code = "import torch; print(torch.__version__, torch.version.cuda or '')"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        return False, "importing torch took over 120 s"
    if proc.returncode != 0:
        return False, "torch is not installed"
    version, _, cuda = proc.stdout.strip().partition(" ")
    if not cuda:
        return False, f"torch {version} is a CPU build: these tests need a CUDA build"
    return True, f"torch {version} (CUDA {cuda})"


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if "gpu_tests" in str(item.fspath)]
    if not mine:
        return
    count, why = gpu_count()
    for item in mine:
        if count == 0:
            item.add_marker(pytest.mark.skip(reason=why))
        elif item.get_closest_marker("torch_cuda"):
            ok, what = torch_cuda()
            if not ok:
                item.add_marker(pytest.mark.skip(reason=what))
