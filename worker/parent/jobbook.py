"""The jobs the supervisor holds and their one final report.

Owned by the supervisor core, used from its thread only. The queue is here; a job in a
child is in that child's slot (slots.py). `report` is the single place a job ends: it
turns into one `Ended` action, and never a second time.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Settings
from ..jobs import JobResult, JobState, Reason, failure
from .actions import Ended, JobListener


@dataclass
class TrackedJob:
    job: dict
    listener: JobListener
    submitted: float
    raw: Any = None
    started: float = 0.0
    deadline: float | None = None
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
    def __init__(self, out: list, settings: Callable[[], Settings]):
        self._out = out                   # the core's action list for the current step
        self._settings = settings
        self.pending: collections.deque[TrackedJob] = collections.deque()
        self.active_ids: set = set()      # ids pending or in flight
        self.finished = 0
        self.received = 0                 # jobs submitted (each ends once: finished)

    def report(self, tracked: TrackedJob, result: JobResult, counted: bool = True) -> None:
        if tracked.finished:
            return
        tracked.finished = True
        result.trace = tracked.job.get("traceparent")
        if counted:
            self.active_ids.discard(tracked.id)
        self.finished += 1
        self._out.append(Ended(tracked.listener, result))

    def refuse(self, tracked: TrackedJob, text: str, counted: bool = True) -> None:
        self.report(tracked, self.failure(tracked.id, JobState.FAILED, Reason.REFUSED,
                                          "JobRefused", text), counted)

    def end(self, tracked: TrackedJob, state: JobState, reason: Reason, text: str, now: float,
            error_type: str) -> None:
        """End a job the worker decided about (timeout, cancel, lost child), with times."""
        self.report(tracked, tracked.timed(self.failure(tracked.id, state, reason, error_type,
                                                        text), now))

    def fail_all(self, running: list, reason: Reason, error_type: str, text: str,
                 details: str = "") -> None:
        """Fail the queue and `running` (the jobs in children, whose slots let go of them)."""
        for tracked in list(self.pending) + list(running):
            self.report(tracked, self.failure(tracked.id, JobState.FAILED, reason, error_type,
                                              text, details))
        self.pending.clear()

    def failure(self, job_id: str, state: JobState, reason: Reason, error_type: str, text: str,
                details: str = "") -> JobResult:
        s = self._settings()
        return failure(job_id, state, reason, error_type, text, s.worker_id, s.hostname, details)
