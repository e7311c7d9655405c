"""A child forked from a forkserver whose preloads initialised CUDA cannot use CUDA: torch
refuses ("Cannot re-initialize CUDA in forked subprocess") the first time the handler
touches the GPU, often deep in a model load. Checked once at the child's start, before
the handler's module runs, so the failure is one clear setup line instead."""
from __future__ import annotations

import os
import sys


class CudaBeforeFork(RuntimeError):
    """The forkserver holds CUDA state: children forked from it cannot use CUDA."""


def restore() -> None:
    """Undo what preload_first set for the forkserver's preloads."""
    first = sys.modules.get("worker.child.preload_first")
    if first is not None and first.SET_HERE:
        os.environ.pop(first.VAR, None)


def check(preload: list) -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        poisoned = bool(torch.cuda._is_in_bad_fork())
    except Exception:           # noqa: BLE001 - an older or unusual torch: nothing to say
        return
    if poisoned:
        raise CudaBeforeFork(
            "a module preloaded in the forkserver initialised CUDA (WORKER_PRELOAD="
            f"{','.join(preload)}), so no worker process forked from it can use CUDA: keep "
            "CUDA calls out of those modules' import, drop the module from WORKER_PRELOAD, "
            "or set WORKER_START_METHOD=spawn")
