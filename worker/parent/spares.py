"""When a slot keeps a spare child: set up, warmed and held idle while the active child
serves, so that replacing the active child is a swap, not a wait for a new one's set-up.

The slot holds the spare (a child.Child in the SPARE role) and the children it replaced
(RETIRING), and asks for a spare beside a live active child (Slot.wants_spare); this
policy says whether the slot keeps one at all, how long after a failure it waits, and
what failures turn it off. A spare has run
no job, so a promoted spare is as fresh as a new child. Its failures never take the slot
out of service: rebuilds back off, and after SPARE_FAILURES_OFF in a row the slot keeps
no spare (the reason in /health). A retiring child stops as any child does (Stop,
SIGTERM, SIGKILL, lost), and no new spare is built before it has gone. After an
application Xid (NVML names no process: it may be the spare's context that is poisoned)
the spare runs the GPU check (protocol.Check) and takes over only once it has passed.
"""
from __future__ import annotations

import enum
import logging

from .. import backoff
from ..config import Settings
from . import device_settle

log = logging.getLogger("worker")

SPARE_FAILURES_OFF = 3        # spare failures in a row that turn the slot's spare off
RETRY_BASE_S = 1.0            # a failed spare is rebuilt after 1, 2, 4 ... s
AUTO_SETUP_S = 1.0            # WORKER_SPARE=auto: a set-up this long is worth sparing
UNFIT_RETRY_S = 30.0          # a spare that did not fit: asked again this much later
SOON_S = 0.25                 # ... or this soon while a child's GPU memory is being freed
# Set-up errors that say a second copy of the module can never set up beside the first:
# a fixed port bound, a file lock taken, at import; a port the active child's processes
# listen on that the spare's could not (child/beside.py). The one place text is matched:
# the handler's own exception, as the spare reported it.
ONE_COPY_ONLY = ("Address already in use", "Resource temporarily unavailable",
                 "EXCLUSIVE_PROCESS", "cannot set up beside the first")


class SpareSetting(str, enum.Enum):
    """WORKER_SPARE."""
    AUTO = "auto"
    ON = "on"
    OFF = "off"


_SETTINGS = {m.value: m for m in SpareSetting}


class SparePolicy:
    def __init__(self):
        self.failures = 0                       # spare failures in a row
        self.retry_at: float | None = None      # no spare before (a backoff, a refit)
        self.off: str | None = None             # why this slot keeps no spare
        self.first_setup_s: float | None = None # the slot's first child's set-up (auto)
        self.promotions = 0
        self.unspared = 0          # replacements that found no spare ready
        self.unfit: str | None = None           # why a spare does not fit now (numbers)
        self.freed_at: float | None = None      # when a retiring child last exited
        self._none_view: tuple | None = None    # (its figures, the view with no spare)

    def enabled(self, settings: Settings, devices: tuple) -> bool:
        setting = _SETTINGS[settings.spare]
        if setting is SpareSetting.OFF or self.off is not None:
            return False
        if setting is SpareSetting.ON:
            return True
        # auto: where a refresh costs a second or more, and a spare does not cost a
        # private copy of the model in RAM (a GPU's copy is in VRAM: the fit check; with
        # warm refresh the weights are shared with the forkserver). docs/benchmarks.md.
        return (self.first_setup_s or 0.0) >= AUTO_SETUP_S and (
            bool(devices) or settings.warm_refresh)

    def first_setup(self, seconds: float) -> None:
        if self.first_setup_s is None:
            self.first_setup_s = seconds

    def tick(self, now: float) -> None:
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None

    def replaced_without_spare(self, settings: Settings, devices: tuple) -> None:
        if self.enabled(settings, devices):
            self.unspared += 1

    def promoted(self) -> None:
        self.promotions += 1

    def ready(self) -> None:
        self.failures = 0

    def spawned(self) -> None:
        self.unfit = None

    def retired_gone(self, now: float) -> None:
        self.freed_at = now

    def failed(self, reason: str, now: float) -> None:
        """The spare could not start or died before promotion: back off, or turn off."""
        self.failures += 1
        if self.failures >= SPARE_FAILURES_OFF or any(s in reason for s in ONE_COPY_ONLY):
            self.off = reason if self.failures == 1 else \
                f"{self.failures} spares in a row failed (last: {reason})"
            log.warning("no spare child from now on in this slot: %s", self.off)
            return
        delay = backoff.delay(self.failures, RETRY_BASE_S)
        self.retry_at = now + delay
        log.warning("the spare child failed (%s); another in %.0fs", reason, delay)

    def not_now(self, reason: str, short_of_gpu: bool, now: float) -> None:
        """No spare now (it does not fit beside the active child, or the start failed for
        a moment): asked again later, said once. Short of GPU memory just after a child
        left, the driver may still be freeing it: asked again soon, and said only if it
        is still short once the settle bound has passed."""
        if short_of_gpu and self.freed_at is not None \
                and now - self.freed_at < device_settle.BOUND_S:
            self.retry_at = now + SOON_S
            return
        if self.unfit is None:
            log.warning("no spare child for now: %s; checked again every %.0fs", reason,
                        UNFIT_RETRY_S)
        self.unfit = reason
        self.retry_at = now + UNFIT_RETRY_S

    def view(self, spare, retiring: list) -> dict:
        """As /health shows it (`ready_at` on the loop's clock). Read-only for the caller:
        with no spare and no retiring child (most slots, most of the time) the same dict
        is handed out until a figure in it changes."""
        if spare is None and not retiring:
            key = (self.off, self.unfit, self.failures, self.promotions, self.unspared)
            if self._none_view is None or self._none_view[0] != key:
                self._none_view = (key, self._view(None, retiring))
            return self._none_view[1]
        return self._view(spare, retiring)

    def _view(self, spare, retiring: list) -> dict:
        c = spare if spare is not None and not spare.unborn else None
        return {"state": c.state.value if c else ("starting" if spare else None),
                "pid": c.pid if c else None, "ready_at": c.ready_at if c else None,
                "rss_bytes": c.rss if c else 0, "off": self.off, "unfit": self.unfit,
                "vram_mb": (c.torch or {}).get("reserved_mb") if c else None,
                "gpu_check": None if spare is None or spare.gpu_check_after is None
                else f"after {spare.gpu_check_after}",
                "failures": self.failures, "promotions": self.promotions,
                "replaced_without_spare": self.unspared,
                "retiring": [r.pid for r in retiring]}
