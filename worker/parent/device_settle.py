"""Waiting for a dead child's device memory before its replacement starts.

The driver frees a process's GPU memory a moment after the process exits. A baseline read
before that would hide the next child's growth from the VRAM policy, and on a tight GPU
the next child's model load could fail. Where NVML's per-process list is ours
(gpu_procs.py) the wait is exact: until the dead child's pid has left it, which holds
beside a sibling child on the same GPU too (its memory moves with its work, so no total
can say). Elsewhere the next child starts once device memory in use is back within a
margin of the old child's baseline (not on a shared GPU: nothing to compare with), or
after a bound, when the reading then is taken as the new baseline.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("worker")

MARGIN_MB = 64.0
BOUND_S = 5.0
POLL_S = 0.05


def used(probe, devices: tuple) -> float:
    """Device memory in use on `devices` (all the probe sees when ()); 0 if unreadable."""
    try:
        reading = probe.read(None)
        return (reading.only(devices) if devices else reading).device_used_mb
    except Exception:      # noqa: BLE001 - a probe must never stop a start
        return 0.0


def free(probe, devices: tuple) -> float:
    """Device memory free on `devices`; 0 if unreadable (nothing fits)."""
    try:
        reading = probe.read(None)
        reading = reading.only(devices) if devices else reading
        return (reading.device_total_mb or 0.0) - reading.device_used_mb
    except Exception:      # noqa: BLE001
        return 0.0


def settled(used: float, previous: float | None) -> bool:
    return previous is None or used <= previous + MARGIN_MB


class Wait:
    """One Settle's question, asked until it is answered or the bound passes."""

    def __init__(self, probe, procs, action):
        self.probe, self.procs, self.action = probe, procs, action
        listing = None if action.gone_pid is None else procs.listing(action.devices)
        self.by_pid = listing is not None        # NVML's list says when it is free
        self.previous = None if self.by_pid else action.previous_mb

    def done(self) -> bool:
        if self.by_pid:
            listing = self.procs.listing(self.action.devices)
            return listing is None or self.action.gone_pid not in listing
        return settled(used(self.probe, self.action.devices), self.previous)

    def wait(self, stop: threading.Event, give_up: Callable[[], bool]) -> tuple:
        """Poll until done (or the bound, or `give_up()`): (the reading now, whether the
        next child fits: the memory back, or, after a lost child, its need free)."""
        deadline = time.monotonic() + BOUND_S
        back = self.done()
        while not back and time.monotonic() < deadline and not give_up():
            stop.wait(POLL_S)
            back = self.done()
        now = used(self.probe, self.action.devices)
        if not back:
            over = "" if self.by_pid or self.previous is None else \
                f", {now - self.previous:.0f} MiB over the last baseline"
            log.info("GPU memory in use is %.0f MiB%s, %.1fs after the worker process "
                     "exited: taken as the new baseline", now, over, BOUND_S)
        need = self.action.need_mb
        return now, need is None or back or free(self.probe, self.action.devices) >= need
