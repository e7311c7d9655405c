"""GPU tests: collected everywhere, run only where CUDA is usable.

Presence is checked through NVML (no CUDA context in the test process), so these tests can
also assert that the parent never holds one.
"""
import pytest


def _gpu_count() -> int:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def _torch_cuda_build() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
    if _gpu_count() > 0 and _torch_cuda_build():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (NVML) and torch installed")
    for item in items:
        if "gpu_tests" in str(item.fspath):
            item.add_marker(skip)
