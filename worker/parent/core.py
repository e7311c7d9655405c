"""The supervisor's decisions, with no I/O and no clock of its own.

Each event (a command from a source, a message or the exit of the child, the memory
reading it asked for, the passing of time) comes with the current time and returns the
actions the loop must carry out (actions.py). Every job ends in exactly one final state,
reported once, through an `Ended` action. Tests drive this class directly, with a fake
clock, in microseconds; supervisor.py wires it to a real child. The events about the
child itself (its messages, its exit) are in child_events.py; the rules of crash blame in
blame.py.
"""
from __future__ import annotations

import logging
from typing import Any

from .. import protocol as P
from ..config import Settings
from ..jobs import SAFE_ID, JobError, JobState, Reason, execution_timeout, validate_job
from ..protocol import HandlerMode
from . import blame, recycling
from .actions import JobListener, Send, Signal, Spawn, Started
from .breaker import RestartBreaker
from .child_events import ChildEvents
from .jobbook import JobBook, TrackedJob
from .lifecycle import ChildRecord, ChildState, StopCause
from .monitor import classify_xid
from .status import Status, WorkerState

log = logging.getLogger("worker")


class SupervisorCore(ChildEvents):
    def __init__(self, settings: Settings, preload: tuple = (), check_preload: bool = False):
        self.settings = settings          # the one effective Settings (start() keys applied)
        self.preload = list(preload)
        self.check_preload = check_preload
        self.state = WorkerState.RUNNING
        self.failure_message: str | None = None
        self.child: ChildRecord | None = None
        self.spawning = False
        self._out: list = []               # actions of the current step
        self.jobs = JobBook(self._out, lambda: self.settings)
        self.pending = self.jobs.pending
        self.in_flight = self.jobs.in_flight
        self.breaker = RestartBreaker()
        self.shutdown_at: float | None = None
        self.spawns = 0
        self.last_ready_s: float | None = None
        self.runs = 0                      # run tokens issued (protocol.Run)
        self.handler_kind: P.Kind | None = None
        self.log_ids: tuple = ()           # jobs the child's output lines belong to
        self.gpu_events: tuple = ()        # the last NVML events: (what, what was done)

    # --- events ------------------------------------------------------------------------

    def submit(self, given: Any, listener: JobListener, submitted: float,
               raw: Any, now: float) -> list:
        try:
            job = validate_job(given)
        except Exception as exc:    # noqa: BLE001 - JobError, or whatever a strange job raises
            text = str(exc) if isinstance(exc, JobError) else \
                f"the job could not be read: {type(exc).__name__}: {exc}"
            self.jobs.refuse(TrackedJob({"id": _some_id(given)}, listener, submitted),
                             text[:1000])
            return self._step(now)
        tracked = TrackedJob(job, listener, submitted, raw)
        if self.state is not WorkerState.RUNNING or self.shutdown_at is not None:
            self.jobs.refuse(tracked, self._unavailable())
        elif tracked.id in self.jobs.active_ids:
            self.jobs.refuse(tracked, "a job with this id is already queued or running",
                             counted=False)
        else:
            self.jobs.active_ids.add(tracked.id)
            self.pending.append(tracked)
        return self._step(now)

    def cancel(self, job_id: str, queued_only: bool, now: float) -> list:
        for tracked in self.pending:
            if tracked.id == job_id:
                self.pending.remove(tracked)
                self.jobs.end(tracked, JobState.CANCELLED, Reason.CANCELLED,
                              "cancelled before it started", now, "Cancelled")
                return self._step(now)
        tracked = self._running(job_id)
        if tracked is not None and not queued_only:
            self._abandon(tracked, JobState.CANCELLED, Reason.CANCELLED, "cancelled", now)
        return self._step(now)

    def refresh(self, reason: str, now: float) -> list:
        if self.child is not None and self.child.refresh_reason is None:
            self.child.refresh_reason = reason
        return self._step(now)

    def stop(self, grace: float, now: float) -> list:
        if self.shutdown_at is None:
            self.shutdown_at = now + max(0.0, grace)
            for tracked in list(self.pending):
                self.jobs.refuse(tracked, "the worker is shutting down")
            self.pending.clear()
        return self._step(now)

    def gpu_event(self, xid: int, what: str, now: float) -> list:
        """An Xid or ECC event from NVML. Events carry no process: an application Xid is
        put on the child that could have caused it, the one running jobs now."""
        kind = classify_xid(xid) if what == "xid" else "unhealthy"
        label = f"Xid {xid}" if what == "xid" else what
        child = self.child
        if kind == "note":
            action = "noted"
            log.info("GPU reported %s: recorded by the driver, nothing to do", label)
        elif kind == "replace":
            if child is None or child.refresh_reason is not None or child.stop_cause:
                action = "ignored: the worker process is already being replaced"
            elif child.jobs_run == 0 and not self.in_flight:
                action = "ignored: it belongs to a worker process already replaced"
            else:
                action = "replace"
                log.warning("GPU reported application %s: the worker process's CUDA context "
                            "is poisoned; replacing it after the running job", label)
                child.refresh_reason = f"GPU {label}"
            if action != "replace":
                log.info("GPU reported application %s, %s", label, action[9:])
        else:
            action = "unhealthy"
            self.failure_message = f"the GPU is unhealthy ({label})"
            self._break(self.failure_message, "GpuUnhealthy",
                        "no more jobs; the platform should replace this worker")
            if child is not None:
                self._stop_child(StopCause.GPU_UNHEALTHY, self.failure_message, now,
                                 interrupt=True)
        self.gpu_events = (*self.gpu_events, (label, action))[-10:]
        return self._step(now)

    def spawned(self, pid: int, baseline_mb: float, now: float) -> list:
        s = self.settings
        self.spawning = False
        self.spawns += 1
        self.child = ChildRecord(pid, now, now + s.setup_timeout if s.setup_timeout > 0 else None,
                                 last_beat=now, baseline_mb=baseline_mb)
        return self._step(now)

    def spawn_skipped(self, now: float) -> list:
        """The loop did not start the child it was asked for: the worker is stopping."""
        self.spawning = False
        return self._step(now)

    def spawn_failed(self, error: str, now: float) -> list:
        self.spawning = False
        self._setup_failed(f"the worker process could not be started: {error}", "")
        return self._step(now)

    def memory(self, reading: Any, now: float) -> list:
        """The reading asked for with ReadMemory (None if the probe failed)."""
        child = self.child
        if child is not None and child.checking_memory:
            child.checking_memory = False
            if reading is not None and child.refresh_reason is None:
                child.refresh_reason = recycling.memory_verdict(reading, child, self.settings)
        return self._step(now)

    def tick(self, now: float) -> list:
        """Time has passed (also the first event: it asks for the first child)."""
        return self._step(now)

    def fail_everything(self, error_type: str, text: str) -> list:
        """The loop itself failed: every job still held ends now."""
        self.jobs.fail_all(Reason.REFUSED, error_type, text)
        self.log_ids = ()
        out = self._out[:]
        self._out.clear()
        return out

    def internal_error(self, text: str, job: Any, listener: JobListener | None,
                       now: float) -> list:
        """An event raised inside the core (a bug, or input nothing anticipated). The job
        it carried, if any, fails; the child, whose jobs may have been left half-handled,
        is replaced with them failed; queued jobs go on."""
        self._out.clear()
        held = [*self.pending, *self.in_flight.values()]
        if listener is not None and not any(t.listener is listener and t.job is job
                                            for t in held):
            tracked = TrackedJob({"id": _some_id(job)}, listener, now)
            self.jobs.refuse(tracked, f"the worker failed on this job: {text}"[:1000],
                             counted=False)
        for tracked in list(self.in_flight.values()):
            self.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST,
                          f"the worker failed while this job ran: {text}"[:1000], now,
                          "WorkerError")
        self.in_flight.clear()
        self.log_ids = ()
        if self.child is not None and self.child.state is not ChildState.STOPPING:
            self._stop_child(StopCause.INTERNAL_ERROR, "internal error", now, interrupt=True)
        return self._step(now)

    # --- queries -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Shut down, with no child left: the loop may end."""
        return self.shutdown_at is not None and self.child is None and not self.spawning

    def _running(self, job_id: str) -> TrackedJob | None:
        for tracked in self.in_flight.values():
            if tracked.id == job_id:
                return tracked
        return None

    def next_deadline(self) -> float | None:
        times = [t.deadline for t in self.in_flight.values() if t.deadline is not None]
        child = self.child
        if child is not None:
            times.append(child.deadline(self.settings.heartbeat_timeout))
            if self.shutdown_at is not None:
                times.append(self.shutdown_at)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def status(self) -> Status:
        c = self.child
        capacity = 0
        if c is not None and c.accepting and self.state is WorkerState.RUNNING \
                and self.shutdown_at is None:
            capacity = c.concurrency
        return Status(
            self.settings, self.state, self.failure_message,
            c.pid if c else None, c.state if c else None, self.handler_kind,
            c.mode if c else None, c.concurrency if c else 1, capacity,
            tuple(c.preloaded) if c else (), c.jobs_run if c else 0, c.rss if c else 0,
            c.torch if c else None, c.baseline_mb if c else 0.0, self.spawns,
            len(self.pending), tuple(t.id for t in self.in_flight.values()), self.log_ids,
            self.jobs.finished,
            self.last_ready_s, self.gpu_events)

    # --- the step after every event ---------------------------------------------------

    def _step(self, now: float) -> list:
        self._check_clocks(now)
        self._ensure_child()
        self._dispatch(now)
        if self.finished:            # no child will come for what is still queued
            for tracked in self.pending:
                self.jobs.refuse(tracked, "the worker is shutting down")
            self.pending.clear()
        out = self._out[:]
        self._out.clear()
        return out

    def _ensure_child(self) -> None:
        if (self.child is None and not self.spawning and self.state is WorkerState.RUNNING
                and self.shutdown_at is None):
            self.spawning = True
            self._out.append(Spawn())

    def _dispatch(self, now: float) -> None:
        child = self.child
        if child is None:
            return
        if child.live and child.refresh_reason and not self.in_flight \
                and not child.checking_memory:
            log.info("refreshing the worker process: %s", child.refresh_reason)
            self._stop_child(StopCause.REFRESH, f"refresh: {child.refresh_reason}", now)
            return
        while (self.pending and child.accepting and self.shutdown_at is None
               and len(self.in_flight) < child.concurrency):
            tracked = self._next_pending(child)
            if tracked is None:
                break
            tracked.started = now
            limit = execution_timeout(tracked.job, self.settings.job_timeout)
            tracked.deadline = now + limit if limit > 0 else None
            self.runs += 1
            tracked.run = self.runs
            msg = P.Run(tracked.run, tracked.job, tracked.raw)
            try:
                data = msg.encode()
            except Exception as exc:   # noqa: BLE001 - not JSON, a lone surrogate, too deep...
                self.jobs.refuse(tracked, f"the job cannot be sent to the worker process: "
                                          f"{type(exc).__name__}: {exc}"[:1000])
                continue
            self._out.append(Send(msg, data))
            self.in_flight[tracked.run] = tracked
            self.log_ids = self._running_ids()
            child.state = ChildState.BUSY
            self._out.append(Started(tracked.listener, tracked.id))

    def _next_pending(self, child: ChildRecord) -> TrackedJob | None:
        i = blame.next_runnable(self.pending, self.in_flight.values(),
                                child.abandoned_ids if child.cancels else ())
        if i is None:
            return None
        tracked = self.pending[i]
        del self.pending[i]
        return tracked

    def _running_ids(self) -> tuple:
        return tuple(t.id for t in self.in_flight.values())

    def _check_clocks(self, now: float) -> None:
        for tracked in list(self.in_flight.values()):
            if tracked.deadline is not None and now >= tracked.deadline:
                limit = tracked.deadline - tracked.started
                self._abandon(tracked, JobState.TIMED_OUT, Reason.TIMED_OUT,
                              f"the job ran longer than its execution timeout of {limit:g}s", now)
        child = self.child
        if child is None:
            return
        s = self.settings
        due = child.due(now, s.stop_grace, s.heartbeat_timeout, self.shutdown_at,
                        busy=bool(self.in_flight))
        if isinstance(due, Signal):
            log.warning("child %d did not stop within %.1fs; sending %s to its process "
                        "group", child.pid, s.stop_grace, due.sig.name)
            self._out.append(due)
        elif due is not None:
            cause, text, interrupt = due
            self._stop_child(cause, text, now, interrupt)

    # --- endings ------------------------------------------------------------------------

    def _stop_child(self, cause: StopCause, text: str, now: float,
                    interrupt: bool = False) -> None:
        child = self.child
        actions = child.begin_stop(cause, text, now, self.settings.stop_grace, interrupt)
        if actions:
            log.info("stopping child %d: %s", child.pid, text)
            self._out.extend(actions)

    def _abandon(self, tracked: TrackedJob, state: JobState, reason: Reason, text: str,
                 now: float, error_type: str | None = None) -> None:
        """End a running job now (timeout or cancel) and make sure its work stops."""
        child = self.child
        del self.in_flight[tracked.run]
        self.log_ids = self._running_ids()
        if error_type is None:
            error_type = "TimedOut" if state is JobState.TIMED_OUT else "Cancelled"
        self.jobs.end(tracked, state, reason, text, now, error_type)
        if child is None or child.state is ChildState.STOPPING:
            return
        if child.mode is HandlerMode.INLINE:
            self._stop_child(StopCause.JOB_ENDED, f"job {tracked.id} {reason.value}", now,
                             interrupt=True)
            return
        cancel = P.Cancel(tracked.run)
        self._out.append(Send(cancel, cancel.encode()))
        child.cancels[tracked.run] = (tracked.id, now + self.settings.stop_grace)
        if not self.in_flight and child.state is ChildState.BUSY:
            child.state = ChildState.READY

    def _setup_failed(self, message: str, details: str, tail: list = ()) -> None:
        self.state = WorkerState.SETUP_FAILED
        self.failure_message = message
        text = f"handler setup failed: {message}"
        if details:
            text += "\n" + details.rstrip()
        elif tail:
            text += "\nlast output of the worker process:\n" + "\n".join(tail)
        log.error(text)
        self._fail_all(Reason.REFUSED, "SetupFailed", f"handler setup failed: {message}",
                       details or "\n".join(tail))

    def _break(self, message: str, error_type: str, advice: str = "") -> None:
        self.state = WorkerState.BROKEN
        log.error("%s%s", message, f": {advice}" if advice else "")
        self._fail_all(Reason.REFUSED, error_type, message)

    def _unavailable(self) -> str:
        if self.state is WorkerState.RUNNING:
            return "the worker is shutting down"
        return f"the worker cannot run jobs: {self.failure_message}"

    def _fail_all(self, reason: Reason, error_type: str, text: str, details: str = "") -> None:
        self.jobs.fail_all(reason, error_type, text, details)
        self.log_ids = ()


def _some_id(job: Any) -> str:
    """The job's id for a refusal, when it is one that may go into URLs and logs."""
    try:
        job_id = job.get("id") if isinstance(job, dict) else None
    except Exception:   # noqa: BLE001 - a dict subclass that fails even here
        job_id = None
    return job_id if isinstance(job_id, str) and SAFE_ID.fullmatch(job_id) else "unknown"
