"""The child's own view of its memory: torch's allocator (only if the handler already uses
CUDA) and its resident set."""
from __future__ import annotations

import os
import sys


def _cuda():
    """torch.cuda, only if the handler imported torch and initialised CUDA (never do it for
    them: that would create a context in a child that does not use the GPU)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_initialized() else None
    except Exception:
        return None


def torch_memory() -> dict | None:
    """The child's own view of its GPU memory, summed over every device it may use (a
    handler on cuda:1 counts too): NVML cannot attribute memory to processes inside a
    container, torch's allocator can. Reading a device's allocator figures creates no
    context on it."""
    cuda = _cuda()
    if cuda is None:
        return None
    try:
        out = {"allocated_mb": 0.0, "reserved_mb": 0.0, "peak_mb": 0.0}
        for device in range(cuda.device_count()):
            out["allocated_mb"] += cuda.memory_allocated(device) / 2**20
            out["reserved_mb"] += cuda.memory_reserved(device) / 2**20
            out["peak_mb"] += cuda.max_memory_allocated(device) / 2**20
        return out
    except Exception:
        return None


def reset_peak() -> None:
    """Start a new peak on every device (call it only when no other job is running: the
    peak is the child's, and a reset would erase a running job's)."""
    cuda = _cuda()
    if cuda is None:
        return
    try:
        for device in range(cuda.device_count()):
            cuda.reset_peak_memory_stats(device)
    except Exception:
        pass


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
