"""Helpers shared by the GPU tests and bench/bench_gpu.py: device memory as NVML sees it,
read from the parent (no CUDA context here)."""
import time

from worker.parent.monitor import NvmlProbe


def device_used_mb() -> float:
    probe = NvmlProbe()
    try:
        return probe.read(None).device_used_mb
    finally:
        probe.close()


def settle(baseline: float, margin_mb: float = 64, timeout: float = 20.0) -> float:
    """Device memory in use back within margin of the baseline (the driver frees a dead
    process's memory a moment after it exits); the last reading either way."""
    deadline = time.monotonic() + timeout
    while (used := device_used_mb()) > baseline + margin_mb and time.monotonic() < deadline:
        time.sleep(0.1)
    return used
