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
    """The child's own view of its GPU memory: NVML cannot attribute memory to processes
    inside a container, torch's allocator can."""
    cuda = _cuda()
    if cuda is None:
        return None
    try:
        return {"allocated_mb": cuda.memory_allocated() / 2**20,
                "reserved_mb": cuda.memory_reserved() / 2**20,
                "peak_mb": cuda.max_memory_allocated() / 2**20}
    except Exception:
        return None


def reset_peak() -> None:
    cuda = _cuda()
    if cuda is not None:
        try:
            cuda.reset_peak_memory_stats()
        except Exception:
            pass


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
