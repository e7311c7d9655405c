"""Per-process GPU memory from NVML, trusted only where NVML's pids are this worker's.

NVML lists each device's compute processes and the memory each holds, but names them by
their pid in the driver's (the host's) namespace. In a container those pids mean nothing
here, or name another process. So the figures count only once NVML has listed a process
that is, under the same pid, a descendant of this worker; until then (and in most
containers, for ever) callers fall back to device-level readings and torch's reservation
from the heartbeat. Used by the spare's fit check, its footprint in /health and the
settle wait after a child exits (spare_fit.py, device_settle.py).
"""
from __future__ import annotations

import os

import psutil


class ProcessMemory:
    def __init__(self, probe):
        self._list = getattr(probe, "processes", None)
        self.ours = False          # learned once: NVML's pids are this namespace's

    def listing(self, devices: tuple) -> dict | None:
        """{pid: MiB} on `devices` (() all) when NVML's pids are known to be ours."""
        if self._list is None:
            return None
        try:
            found = self._list(devices)
        except Exception:          # noqa: BLE001 - a probe must never stop a start
            return None
        if found is None:
            return None
        if not self.ours:
            self.ours = any(_descendant(pid) for pid in found)
        return found if self.ours else None

    def of_tree(self, pid: int, devices: tuple) -> float | None:
        """MiB that `pid` and its descendants hold on `devices`; None when unknown."""
        found = self.listing(devices)
        if found is None:
            return None
        return sum(found.get(p, 0.0) for p in _tree(pid))


def _tree(pid: int) -> list:
    try:
        proc = psutil.Process(pid)
        return [pid, *(p.pid for p in proc.children(recursive=True))]
    except psutil.Error:
        return [pid]


def _descendant(pid: int) -> bool:
    me = os.getpid()
    try:
        return pid != me and any(p.pid == me for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False
