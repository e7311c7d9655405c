"""A place for one child: its devices, the child in it now, the jobs that child runs, and
what the place has been through (restart storms, setup failures). The core keeps one per
child the worker runs (placement.py decides how many and with which GPUs); a job is in at
most one slot's `in_flight`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .breaker import RestartBreaker
from .jobbook import TrackedJob
from .lifecycle import ChildRecord


@dataclass
class Slot:
    index: int
    devices: tuple = ()            # its children's CUDA_VISIBLE_DEVICES; () = the parent's
    shared: bool = False           # another slot uses one of its GPUs
    child: ChildRecord | None = None
    spawning: bool = False
    in_flight: dict = field(default_factory=dict)    # run -> TrackedJob, in its child now
    log_ids: tuple = ()            # jobs the child's untagged output lines belong to
    breaker: RestartBreaker = field(default_factory=RestartBreaker)
    ever_ready: bool = False       # a child here has passed setup (and its checks)
    setup_failures: int = 0        # in a row, since a child here was last ready
    out: str | None = None         # out of service, and why: no child starts here again
    revivable: bool = False        # out before any slot was ready: tried again once one is
    spawns: int = 0
    next_cause: str = "first"      # why its next child starts (lifecycle.start_cause)
    last_run: int = 0              # the run it got last: among idle slots, the oldest first

    def env(self) -> dict:
        """What its child's environment gets: its GPUs and its index."""
        env = {"WORKER_CHILD_INDEX": str(self.index)}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return env

    def running_ids(self) -> tuple:
        return tuple(t.id for t in self.in_flight.values())

    def find(self, job_id: str) -> TrackedJob | None:
        for tracked in self.in_flight.values():
            if tracked.id == job_id:
                return tracked
        return None

    def room(self) -> int:
        """Jobs its child would take now."""
        child = self.child
        if child is None or not child.accepting:
            return 0
        return max(0, child.concurrency - len(self.in_flight))

    def label(self, slots: list) -> str:
        """' (slot 2, GPU-…)' for log lines, when the worker has several children."""
        if len(slots) == 1:
            return ""
        return f" (slot {self.index}" + (f", {','.join(self.devices)})" if self.devices
                                         else ")")


class NoChildClock:
    """Seconds the worker has had no ready child (a first start, a refresh, a crash),
    summed: a job's setup wait is how far it moved while the job was queued."""

    def __init__(self):
        self._total, self._since = 0.0, None

    def update(self, live: bool, now: float) -> None:
        """After every event: is any child ready now?"""
        if live and self._since is not None:
            self._total += now - self._since
            self._since = None
        elif not live and self._since is None:
            self._since = now

    def at(self, now: float) -> float:
        return self._total + (now - self._since if self._since is not None else 0.0)
