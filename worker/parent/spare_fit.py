"""Does a spare fit beside the active child? Asked by the loop before it starts one.

Host memory: the active child's own pages (USS: a spare forked from the same forkserver
shares the rest, the preloads and a warm import's weights) against what is available
(the host's, and the container's cgroup limit). GPU memory: the active child's peak during
jobs (torch's peak allocation, from its results, or its reservation, whichever is larger;
not its idle footprint: a spare built while a job runs must not push that job into OOM),
or, where NVML's per-process figures are ours (gpu_procs.py), what NVML says the active
child holds (its CUDA context included) if that is larger, against the slot's devices'
free memory. A device in EXCLUSIVE_PROCESS compute mode takes
one process: no spare can ever fit there.
"""
from __future__ import annotations

from typing import NamedTuple

import psutil

MIB = 2**20
MARGIN = 0.10           # what it needs, plus 10% ...
MIN_MARGIN_MB = 256.0   # ... and at least this much


class Fit(NamedTuple):
    ok: bool
    text: str            # the numbers, for the log line and /health
    never: bool = False  # it cannot fit whatever the numbers (EXCLUSIVE_PROCESS)
    short_of_gpu: bool = False   # GPU memory is what it lacks (it may be freed soon)


def _with_margin(mb: float) -> float:
    return mb + max(mb * MARGIN, MIN_MARGIN_MB)


def own_mb(pid: int) -> float:
    """The child's process tree's own memory (USS), MiB; 0 if unreadable."""
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_full_info().uss for p in [proc, *proc.children(recursive=True)]
                   ) / MIB
    except psutil.Error:
        return 0.0


def available_mb(reading) -> float:
    """Host memory a new process may use: the host's available, within the cgroup's limit."""
    available = psutil.virtual_memory().available / MIB
    if reading.cgroup_limit_mb and reading.cgroup_mb is not None:
        available = min(available, reading.cgroup_limit_mb - reading.cgroup_mb)
    return available


def check(probe, active_pid: int | None, devices: tuple, vram_mb: float,
          procs=None) -> Fit:
    reading = probe.read(None)
    exclusive = getattr(probe, "exclusive", None)
    if devices and exclusive is not None:
        single = exclusive(devices)
        if single:
            return Fit(False, f"GPU {', '.join(single)} is in EXCLUSIVE_PROCESS compute mode "
                              "(one process per GPU)", never=True)
    need = own_mb(active_pid) if active_pid else 0.0
    free = available_mb(reading)
    if _with_margin(need) > free:
        return Fit(False, f"host memory: the active child holds {need:,.0f} MiB of its own, "
                          f"{free:,.0f} MiB are available")
    held = procs.of_tree(active_pid, devices) if procs and active_pid and devices else None
    source = "peak"
    if held is not None and held > vram_mb:
        vram_mb, source = held, "footprint (NVML)"
    if devices and vram_mb > 0:
        mine = reading.only(devices)
        free_vram = sum(d.free_mb for d in mine.devices)
        if mine.devices and _with_margin(vram_mb) > free_vram:
            return Fit(False, f"GPU memory: the active child's {source} is "
                              f"{vram_mb:,.0f} MiB, {free_vram:,.0f} MiB are free",
                       short_of_gpu=True)
    return Fit(True, f"the active child holds {need:,.0f} MiB of its own "
                     f"({free:,.0f} MiB available)")
