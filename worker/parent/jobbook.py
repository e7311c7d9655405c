"""The jobs the supervisor holds and their one final report.

Owned by the supervisor core, used from its thread only. The queue is here; a job in a
child is in that child's record (child.py), by run. `report` is the single place a job
ends: it turns into one `Ended` action, and never a second time. Those actions wait in
the book's own outbox (`outbox`) rather than in a caller's list, so a report made
before a fault in the same step still goes out. `active` holds every job not yet ended,
by id, so the core's guard can find a job that a failed step left nowhere.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Settings
from ..jobs import SAFE_ID, JobResult, JobState, Reason, failure
from .actions import Ended, JobListener


@dataclass
class TrackedJob:
    job: dict
    listener: JobListener
    submitted: float
    raw: Any = None
    started: float = 0.0
    deadline: float | None = None
    expires: float | None = None      # policy.ttl's end: queued or running, it ends there
    crashes: int = 0          # crashes of a child this job ran in alone
    suspect: bool = False     # in a child that crashed with other jobs: next run alone
    run: int = 0              # the current run's token (protocol.Run), 0 before the first
    finished: bool = False
    setup_mark: float = 0.0   # the core's no-child clock when it came
    setup_wait: float = 0.0   # how far that clock moved before its (last) start

    def timed(self, result: JobResult, now: float) -> JobResult:
        """The result with the job's times (ms): queue delay, execution, setup wait."""
        if self.started:
            result.ran = True
            result.delay_ms = int((self.started - self.submitted) * 1000)
            result.execution_ms = int((now - self.started) * 1000)
            result.setup_wait_ms = int(min(self.setup_wait, self.started - self.submitted)
                                       * 1000)
        return result

    @property
    def id(self) -> str:
        return self.job["id"]


class JobBook:
    def __init__(self, settings: Callable[[], Settings]):
        self.outbox: list = []            # Ended actions not yet collected by the core
        self._settings = settings
        self.pending: collections.deque[TrackedJob] = collections.deque()
        self.active: dict[str, TrackedJob] = {}   # id -> job, queued or in a child
        self.finished = 0
        self.received = 0                 # jobs submitted (each ends once: finished)

    def unqueue(self, tracked: TrackedJob) -> None:
        """Take this very job out of the queue, if it is there."""
        for i, queued in enumerate(self.pending):
            if queued is tracked:
                del self.pending[i]
                return

    def report(self, tracked: TrackedJob, result: JobResult) -> None:
        if tracked.finished:
            return
        tracked.finished = True
        result.trace = tracked.job.get("traceparent")
        if self.active.get(tracked.id) is tracked:   # a refused duplicate is not it
            del self.active[tracked.id]
        self.finished += 1
        self.outbox.append(Ended(tracked.listener, result))

    def refuse(self, tracked: TrackedJob, text: str) -> None:
        self.report(tracked, self.failure(tracked.id, JobState.FAILED, Reason.REFUSED,
                                          "JobRefused", text))

    def end(self, tracked: TrackedJob, state: JobState, reason: Reason, text: str, now: float,
            error_type: str) -> None:
        """End a job the worker decided about (timeout, cancel, lost child), with times."""
        self.report(tracked, tracked.timed(self.failure(tracked.id, state, reason, error_type,
                                                        text), now))

    def fail_all(self, running: list, reason: Reason, error_type: str, text: str,
                 details: str = "") -> None:
        """Fail the queue, `running` (the jobs in children, whose slots let go of them) and
        any job a failed step left in neither."""
        for tracked in [*self.pending, *running, *self.active.values()]:
            self.report(tracked, self.failure(tracked.id, JobState.FAILED, reason, error_type,
                                              text, details))
        self.pending.clear()

    def failure(self, job_id: str, state: JobState, reason: Reason, error_type: str, text: str,
                details: str = "") -> JobResult:
        s = self._settings()
        return failure(job_id, state, reason, error_type, text, s.worker_id, s.hostname, details)


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


def some_id(job: Any) -> str:
    """The job's id for a refusal, when it is one that may go into URLs and logs."""
    try:
        job_id = job.get("id") if isinstance(job, dict) else None
    except Exception:   # noqa: BLE001 - a dict subclass that fails even here
        job_id = None
    return job_id if isinstance(job_id, str) and SAFE_ID.fullmatch(job_id) else "unknown"
