"""A slot's spare child: set up, warmed and held idle while the active child serves, so
that replacing the active child is a swap, not a wait for a new one's set-up.

The slot owns it (slots.py) and the core decides through the slot when one is built,
promoted or dropped; the launcher only starts and stops it. A spare has run no job, so a
promoted spare is as fresh as a new child. Its failures never take the slot out of
service: rebuilds back off, and after SPARE_FAILURES_OFF in a row the slot keeps no spare
(the reason in /health). The old child it replaces retires: it stops as any child does
(Stop, SIGTERM, SIGKILL, lost), and no new spare is built before it has gone. After an
application Xid (NVML names no process: it may be the spare's context that is poisoned)
the spare runs the GPU check (protocol.Check) and takes over only once it has passed.
"""
from __future__ import annotations

import logging

from .. import protocol as P
from ..config import Settings
from . import device_settle
from .actions import Send, Signal
from .spare_fit import GPU_SHORT
from .lifecycle import LOST, ChildRecord, ChildState, StopCause

log = logging.getLogger("worker")

SPARE_FAILURES_OFF = 3        # spare failures in a row that turn the slot's spare off
RETRY_BASE_S = 1.0            # a failed spare is rebuilt after 1, 2, 4 ... s
AUTO_SETUP_S = 1.0            # WORKER_SPARE=auto: a set-up this long is worth sparing
UNFIT_RETRY_S = 30.0          # a spare that did not fit: asked again this much later
SOON_S = 0.25                 # ... or this soon while a child's GPU memory is being freed
# Set-up errors that say a second copy of the module can never set up beside the first:
# a fixed port bound, a file lock taken, at import; a port the active child's processes
# listen on that the spare's could not (child/beside.py).
ONE_COPY_ONLY = ("Address already in use", "Resource temporarily unavailable",
                 "EXCLUSIVE_PROCESS", "cannot set up beside the first")
# Stops after which the spare takes over at once (when the old child holds no job).
SWAP_CAUSES = (StopCause.REFRESH, StopCause.JOB_ENDED, StopCause.CANCEL_IGNORED,
               StopCause.HUNG, StopCause.PROTOCOL, StopCause.INTERNAL_ERROR)


class Spares:
    def __init__(self):
        self.child: ChildRecord | None = None   # the spare: starting, or ready and idle
        self.starting: int | None = None        # the child number of a spare being started
        self.retiring: list = []                # replaced children, stopping
        self.failures = 0                       # spare failures in a row
        self.retry_at: float | None = None
        self.off: str | None = None             # why this slot keeps no spare
        self.first_setup_s: float | None = None # the slot's first child's set-up (auto)
        self.ready_at: float | None = None
        self.promotions = 0
        self.unspared = 0          # replacements that found no spare ready
        self.setup_error: str | None = None
        self.unfit: str | None = None           # why a spare does not fit now (numbers)
        self.freed_at: float | None = None      # when a retiring child last exited
        self.suspect: str | None = None         # an application Xid since it started:
        self.checking = False                   # ... it passes the GPU check first
        self.condemned: str | None = None       # why it is being stopped as a failure

    # --- what it is --------------------------------------------------------------------------

    def enabled(self, settings: Settings, devices: tuple) -> bool:
        if settings.spare == "off" or self.off is not None:
            return False
        if settings.spare == "on":
            return True
        # auto: where a refresh costs a second or more, and a spare does not cost a
        # private copy of the model in RAM (a GPU's copy is in VRAM: the fit check; with
        # warm refresh the weights are shared with the forkserver). docs/benchmarks.md.
        return (self.first_setup_s or 0.0) >= AUTO_SETUP_S and (
            bool(devices) or settings.warm_refresh)

    def wanted(self, active: ChildRecord | None, settings: Settings, devices: tuple,
               now: float) -> bool:
        """Build a spare now? Only beside a live active child, with none being built or
        retiring, past a failure's backoff."""
        return (active is not None and active.live and self.child is None
                and self.starting is None and not self.retiring
                and self.retry_at is None and self.enabled(settings, devices))

    @property
    def ready(self) -> bool:
        return (self.child is not None and self.child.state is ChildState.READY
                and self.suspect is None)

    @property
    def coming(self) -> bool:
        """A spare is being started or set up, or waits: the slot waits for it rather
        than starting a third child."""
        return self.starting is not None or (
            self.child is not None and self.child.state is not ChildState.STOPPING)

    @property
    def busy(self) -> bool:
        """A spare or a retiring child exists, or a spare is being started."""
        return self.child is not None or self.starting is not None or bool(self.retiring)

    def owns(self, cid: int) -> ChildRecord | None:
        """The spare or retiring child with that number."""
        if self.child is not None and self.child.cid == cid:
            return self.child
        for child in self.retiring:
            if child.cid == cid:
                return child
        return None

    def view(self) -> dict:
        """As /health shows it (`ready_at` on the loop's clock)."""
        c = self.child
        return {"state": c.state.value if c else ("starting" if self.starting else None),
                "pid": c.pid if c else None, "ready_at": self.ready_at,
                "rss_bytes": c.rss if c else 0, "off": self.off, "unfit": self.unfit,
                "vram_mb": (c.torch or {}).get("reserved_mb") if c else None,
                "gpu_check": None if self.suspect is None else f"after {self.suspect}",
                "failures": self.failures, "promotions": self.promotions,
                "replaced_without_spare": self.unspared,
                "retiring": [r.pid for r in self.retiring]}

    # --- its life ----------------------------------------------------------------------------

    def spawned(self, cid: int, pid: int, now: float, settings: Settings, slot: int) -> None:
        self.starting, self.unfit = None, None
        self.child = ChildRecord(pid, now, now + settings.setup_timeout
                                 if settings.setup_timeout > 0 else None, last_beat=now,
                                 slot=slot, cid=cid)

    def message(self, child: ChildRecord, msg: P.Message, now: float) -> list:
        """A message from the spare or a retiring child; the actions it calls for."""
        child.last_beat = now
        kind = type(msg)
        if kind is P.Heartbeat:
            child.rss, child.torch = msg.rss, msg.gpu
        elif child is not self.child:
            return []
        elif kind is P.Ready and child.ready(msg):
            self.ready_at = now
            self.failures, self.setup_error = 0, None
            log.info("spare child %d ready in %.2fs", child.pid, now - child.started)
            return self._check() if self.suspect else []
        elif kind is P.Checked:
            self.checking = False
            if msg.ok:
                log.info("spare child %d passed the GPU check after %s: %s", child.pid,
                         self.suspect, msg.message)
                self.suspect = None
            else:
                self.condemned = f"the GPU check after {self.suspect} failed: {msg.message}"
                return self.stop(StopCause.GPU_UNHEALTHY, self.condemned, now, 0.0)
        elif kind is P.SetupFailed:
            self.setup_error = msg.message
        elif kind is P.WarmRefused:
            self.setup_error = f"warm import refused: {msg.reason}"
        return []

    def xid(self, label: str) -> list:
        """An application Xid: whatever spare there is (or is coming) passes the GPU check
        before it takes over."""
        if self.child is None and self.starting is None:
            return []
        if self.child is not None and self.child.state is ChildState.STOPPING:
            return []
        self.suspect = label
        return self._check() if self.child is not None and \
            self.child.state is ChildState.READY else []

    def _check(self) -> list:
        if self.checking:
            return []
        self.checking = True
        log.info("spare child %d: running the GPU check (after %s) before it may take over",
                 self.child.pid, self.suspect)
        msg = P.Check(self.suspect)
        return [Send(msg, msg.encode(), self.child.cid)]

    def failed(self, reason: str, now: float) -> None:
        """The spare could not start or died before promotion: back off, or turn off."""
        self.child, self.starting, self.ready_at = None, None, None
        self.suspect, self.checking, self.condemned = None, False, None
        self.failures += 1
        if self.failures >= SPARE_FAILURES_OFF or any(s in reason for s in ONE_COPY_ONLY):
            self.off = reason if self.failures == 1 else \
                f"{self.failures} spares in a row failed (last: {reason})"
            log.warning("no spare child from now on in this slot: %s", self.off)
            return
        delay = RETRY_BASE_S * 2 ** (self.failures - 1)
        self.retry_at = now + delay
        log.warning("the spare child failed (%s); another in %.0fs", reason, delay)

    def not_now(self, reason: str, now: float) -> None:
        """No spare now (it does not fit beside the active child, or the start failed for
        a moment): asked again later, said once. Short of GPU memory just after a child
        left, the driver may still be freeing it: asked again soon, and said only if it
        is still short once the settle bound has passed."""
        self.starting = None
        if reason.startswith(GPU_SHORT) and self.freed_at is not None \
                and now - self.freed_at < device_settle.BOUND_S:
            self.retry_at = now + SOON_S
            return
        if self.unfit is None:
            log.warning("no spare child for now: %s; checked again every %.0fs", reason,
                        UNFIT_RETRY_S)
        self.unfit = reason
        self.retry_at = now + UNFIT_RETRY_S

    def exited(self, child: ChildRecord, how: str, now: float) -> None:
        if child in self.retiring:
            self.retiring.remove(child)
            self.freed_at = now
            return
        if self.condemned is not None:
            self.failed(self.condemned, now)
        elif child.stop_cause is None or child.stop_cause is StopCause.SETUP_TIMEOUT:
            self.failed(self.setup_error or f"it {how}", now)   # a death, not our stop
        else:
            self.child, self.ready_at = None, None
            self.suspect, self.checking = None, False

    def promote(self) -> ChildRecord:
        child, self.child, self.ready_at = self.child, None, None
        child.baseline_known = False     # it started beside another child: no baseline
        self.promotions += 1
        return child

    def retire(self, old: ChildRecord) -> None:
        self.retiring.append(old)

    # --- its clocks and stops ----------------------------------------------------------------

    def stop(self, cause: StopCause, text: str, now: float, grace: float) -> list:
        """Drop the spare (shutdown, a cold refresh, the slot out, too old)."""
        child = self.child
        if child is None or child.state is ChildState.STOPPING:
            return []
        log.info("stopping spare child %d: %s", child.pid, text)
        return child.begin_stop(cause, text, now, grace, interrupt=True)

    def check_clocks(self, now: float, settings: Settings, keep: bool) -> list:
        """The retiring children's and the spare's stop steps, the spare's set-up
        deadline and age; `keep` False drops the spare (shutdown, slot out, turned off)."""
        actions: list = []
        grace = settings.stop_grace
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        for child in list(self.retiring):
            due = child.due(now, grace, 0.0, None, busy=False)
            if due is LOST:
                log.error("retired child %d did not exit after SIGKILL: let go", child.pid)
                self.retiring.remove(child)
            elif isinstance(due, Signal):
                actions.append(due)
        spare = self.child
        if spare is None:
            return actions
        if spare.state is ChildState.STOPPING:
            due = spare.due(now, grace, 0.0, None, busy=False)
            if due is LOST:
                self.child = None
            elif isinstance(due, Signal):
                actions.append(due)
        elif not keep:
            actions += self.stop(StopCause.SHUTDOWN, "no spare kept", now, grace)
        elif spare.state is ChildState.STARTING and spare.setup_deadline is not None \
                and now >= spare.setup_deadline:
            self.setup_error = f"set-up did not finish within {settings.setup_timeout:g}s"
            actions += self.stop(StopCause.SETUP_TIMEOUT, "spare setup timeout", now, grace)
        elif self.ready and settings.spare_max_age > 0 \
                and now - self.ready_at >= settings.spare_max_age:
            actions += self.stop(StopCause.REFRESH, f"the spare waited "
                                 f"{settings.spare_max_age:g}s (WORKER_SPARE_MAX_AGE)",
                                 now, grace)
        return actions

    def deadlines(self, settings: Settings) -> list:
        times = [c.stop_next for c in self.retiring]
        spare = self.child
        if spare is not None:
            if spare.state is ChildState.STOPPING:
                times.append(spare.stop_next)
            elif spare.state is ChildState.STARTING:
                times.append(spare.setup_deadline)
            elif settings.spare_max_age > 0 and self.ready_at is not None:
                times.append(self.ready_at + settings.spare_max_age)
        if self.retry_at is not None and self.child is None and self.starting is None:
            times.append(self.retry_at)
        return [t for t in times if t is not None]
