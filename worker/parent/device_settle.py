"""Waiting for a dead child's device memory before its replacement starts.

The driver frees a process's GPU memory a moment after the process exits. A baseline read
before that would hide the next child's growth from the VRAM policy, and on a tight GPU
the next child's model load could fail. So the next child starts once device memory in
use is back within a margin of the old child's baseline, or after a bound, when the
reading then is taken as the new baseline (another process may have grown meanwhile).
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


def wait(read_used: Callable[[], float], previous: float, stop: threading.Event,
         give_up: Callable[[], bool]) -> float:
    """Poll until memory in use is back (or the bound passes, or `give_up()`); returns
    the last reading."""
    deadline = time.monotonic() + BOUND_S
    used = read_used()
    while not settled(used, previous) and time.monotonic() < deadline and not give_up():
        stop.wait(POLL_S)
        used = read_used()
    if not settled(used, previous):
        log.info("GPU memory in use is %.0f MiB, %.0f MiB over the last baseline, after the "
                 "worker process exited: taken as the new baseline", used, used - previous)
    return used
