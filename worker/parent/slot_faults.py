"""A slot's faults that are not its child's exit: a start that failed for a moment
(EMFILE, a launcher replaced: tried again after a backoff) and a child lost after SIGKILL
(let go of; the next one starts once its memory is back or it fits). Both count towards
the slot's breaker; each returns a Verdict when that trips it.
"""
from __future__ import annotations

import logging

from .lifecycle import KILL_WAIT_S, Verdict

log = logging.getLogger("worker")

RETRY_BASE_S = 1.0        # a start that failed for a moment: tried again after 1, 2, 4...
RETRY_MAX_S = 30.0


def start_failed(slot, error: str, now: float):
    """A start failed for a moment (descriptors, memory, the launcher): try again after
    a backoff. It counts towards the breaker like a child that died young."""
    s = slot.settings
    slot.start_failures += 1
    slot.start_error = error
    delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (slot.start_failures - 1))
    slot.retry_at = now + delay
    slot.breaker.record(now, s.restart_window)
    log.warning("could not start a worker process%s (%d in a row): %s; trying again in "
                "%.0fs", slot.label(), slot.start_failures, error, delay)
    if slot.breaker.tripped(s.restart_limit):
        slot.retry_at = None
        return Verdict("tripped", f"{len(slot.breaker.deaths)} worker processes in a row "
                                  f"could not start or died before finishing a job, "
                                  f"within {s.restart_window:g}s (last: {error}); not "
                                  "trying again (WORKER_RESTART_LIMIT)")
    return None

def lost(slot, now: float):
    """Its child did not exit after SIGKILL: let go of it (its host still reaps it if
    it ever exits). The next child starts once its memory is back or a fit check
    passes (core._ensure_children); it counts towards the breaker."""
    child, slot.child = slot.child, None
    s = slot.settings
    slot.lost += 1
    slot.previous_mb = child.baseline_mb if child.baseline_known else None
    slot.previous_pid = child.pid
    slot.lost_need_mb = (child.torch or {}).get("reserved_mb", 0.0)
    slot.next_cause = "lost"
    wait = max(s.stop_grace, KILL_WAIT_S)
    log.error("child %d%s did not exit within %gs of SIGKILL (stuck in the kernel?): "
              "declared lost; a new one starts in its place", child.pid, slot.label(),
              wait)
    slot._lose(slot.let_go(), f"the worker process could not be stopped ({child.stop_text})"
                              f" and was declared lost", now)
    slot.breaker.record(now, s.restart_window)
    if slot.breaker.tripped(s.restart_limit):
        return Verdict("tripped", f"{len(slot.breaker.deaths)} worker processes in a row "
                                  f"died, hung or were lost within {s.restart_window:g}s;"
                                  " not respawning (WORKER_RESTART_LIMIT)")
    return None
