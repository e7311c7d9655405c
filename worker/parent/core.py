"""The supervisor's decisions, with no I/O and no clock of its own.

Each event (a command from a source, a message or the exit of the child, the memory
reading it asked for, the passing of time) comes with the current time and returns the
actions the loop must carry out (actions.py). Every job ends in exactly one final state,
reported once, through an `Ended` action. Tests drive this class directly, with a fake
clock, in microseconds; supervisor.py wires it to a real child.
"""
from __future__ import annotations

import logging
from typing import Any

from .. import protocol as P
from ..config import Settings, SettingsError
from ..jobs import JobError, JobResult, JobState, Reason, execution_timeout, validate_job
from ..protocol import HandlerMode
from . import recycling
from .actions import (Chunked, JobListener, Progressed, ReadMemory, Send, Signal, Spawn,
                      Started)
from .breaker import RestartBreaker
from .jobbook import JobBook, TrackedJob
from .lifecycle import ChildRecord, ChildState, ExitCause, StopCause
from .monitor import classify_xid
from .status import Status, WorkerState

log = logging.getLogger("worker")


class SupervisorCore:
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
        self.handler_kind: P.Kind | None = None
        self.log_ids: tuple = ()           # jobs the child's output lines belong to

    # --- events ------------------------------------------------------------------------

    def submit(self, given: Any, listener: JobListener, submitted: float,
               raw: bytes | None, now: float) -> list:
        try:
            job = validate_job(given)
        except JobError as exc:
            job_id = given.get("id") if isinstance(given, dict) and \
                isinstance(given.get("id"), str) else "unknown"
            self.jobs.refuse(TrackedJob({"id": job_id}, listener, submitted), str(exc))
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
        tracked = self.in_flight.get(job_id)
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
        if what == "xid" and classify_xid(xid) == "replace":
            log.warning("GPU reported application Xid %d: the worker process's CUDA context "
                        "is poisoned; replacing it after the running job", xid)
            return self.refresh(f"GPU Xid {xid}", now)
        self.failure_message = (f"the GPU is unhealthy ({what} {xid if xid >= 0 else ''})"
                                .replace(" )", ")"))
        self._break(self.failure_message, "GpuUnhealthy",
                    "no more jobs; the platform should replace this worker")
        if self.child is not None:
            self._stop_child(StopCause.GPU_UNHEALTHY, self.failure_message, now, interrupt=True)
        return self._step(now)

    def spawned(self, pid: int, baseline_mb: float, now: float) -> list:
        s = self.settings
        self.spawning = False
        self.spawns += 1
        self.child = ChildRecord(pid, now, now + s.setup_timeout if s.setup_timeout > 0 else None,
                                 last_beat=now, baseline_mb=baseline_mb)
        return self._step(now)

    def spawn_failed(self, error: str, now: float) -> list:
        self.spawning = False
        self._setup_failed(f"the worker process could not be started: {error}", "")
        return self._step(now)

    def message(self, msg: P.Message, now: float) -> list:
        child = self.child
        if child is None:
            return []
        child.last_beat = now
        if isinstance(msg, P.Done):
            self._on_done(child, msg, now)
        elif isinstance(msg, (P.Chunk, P.Progress)):
            tracked = self.in_flight.get(msg.job_id)
            if tracked is not None:
                event = Chunked if isinstance(msg, P.Chunk) else Progressed
                self._out.append(event(tracked.listener, msg.job_id, msg.value))
        elif isinstance(msg, P.Heartbeat):
            child.rss, child.torch = msg.rss, msg.gpu
        elif isinstance(msg, P.Ready):
            self._on_ready(child, msg, now)
        elif isinstance(msg, P.SetupFailed):
            child.setup_error = (msg.message, msg.traceback)
        return self._step(now)

    def memory(self, reading: Any, now: float) -> list:
        """The reading asked for with ReadMemory (None if the probe failed)."""
        child = self.child
        if child is not None and child.checking_memory:
            child.checking_memory = False
            if reading is not None and child.refresh_reason is None:
                child.refresh_reason = recycling.memory_verdict(reading, child, self.settings)
        return self._step(now)

    def exited(self, code: int | None, output_tail: list, now: float) -> list:
        child, self.child = self.child, None
        self.log_ids = ()
        if child is not None:
            self._on_exit(child, code, output_tail, now)
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

    # --- queries -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Shut down, with no child left: the loop may end."""
        return self.shutdown_at is not None and self.child is None and not self.spawning

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
            len(self.pending), tuple(self.in_flight), self.log_ids, self.jobs.finished,
            self.last_ready_s)

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
            tracked = self.pending.popleft()
            tracked.started = now
            limit = execution_timeout(tracked.job, self.settings.job_timeout)
            tracked.deadline = now + limit if limit > 0 else None
            msg = P.Run(tracked.job, tracked.raw)
            try:
                data = msg.encode()
            except (TypeError, ValueError, RecursionError) as exc:
                self.jobs.refuse(tracked, f"the job is not JSON: {exc}")
                continue
            tracked.raw = None      # sent: a retry after a crash re-encodes the dict
            self._out.append(Send(msg, data))
            self.in_flight[tracked.id] = tracked
            self.log_ids = tuple(self.in_flight)
            child.state = ChildState.BUSY
            self._out.append(Started(tracked.listener, tracked.id))

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

    # --- the child's messages and exit ---------------------------------------------------

    def _on_ready(self, child: ChildRecord, msg: P.Ready, now: float) -> None:
        if not child.ready(msg):
            return
        self.handler_kind = msg.kind
        if msg.config:
            try:
                self.settings = self.settings.with_config(msg.config)
            except SettingsError as exc:     # the child checked them; this is a safety net
                log.error("start() settings ignored: %s", exc)
        self.last_ready_s = now - child.started
        log.info("child %d ready in %.2fs (handler: %s, %s, concurrency %d%s)",
                 child.pid, self.last_ready_s, msg.kind.value, msg.mode.value, child.concurrency,
                 f"; preloaded: {', '.join(msg.preloaded)}" if msg.preloaded else "")
        missing = [m for m in self.preload if m not in msg.preloaded]
        if missing and self.check_preload:
            log.warning("preload modules not loaded in the forkserver (import failed?): %s",
                        ", ".join(missing))

    def _on_done(self, child: ChildRecord, msg: P.Done, now: float) -> None:
        child.concurrency = max(1, msg.concurrency)
        child.cancels.pop(msg.job_id, None)
        tracked = self.in_flight.pop(msg.job_id, None)
        # Output still in the pipe belongs to the job that just ended, not to nobody.
        self.log_ids = tuple(self.in_flight) or (msg.job_id,)
        if tracked is None:
            return   # already ended by the worker (timeout, cancel): this is the child's ack
        child.jobs_run += 1
        result = JobResult(msg.job_id, msg.state, msg.reason, msg.body, msg.refresh,
                           int((tracked.started - tracked.submitted) * 1000),
                           int((now - tracked.started) * 1000))
        if msg.peak_vram_mb is not None:
            result.extra["peak_vram_mb"] = msg.peak_vram_mb
        self.jobs.report(tracked, result)
        log.log(logging.INFO if result.state is JobState.COMPLETED else logging.WARNING,
                "job %s (%s) in %d ms%s", result.state.value, result.reason.value,
                result.execution_ms, "" if msg.peak_vram_mb is None else
                f", peak VRAM {msg.peak_vram_mb:.0f} MiB", extra={"job_id": msg.job_id})
        if child.refresh_reason is None:
            child.refresh_reason = recycling.after_job(result, child, self.settings)
        self._maybe_idle(child)

    def _maybe_idle(self, child: ChildRecord) -> None:
        """A busy child with no job left is ready; between jobs, check its memory."""
        if self.in_flight or child.state is not ChildState.BUSY:
            return
        child.state = ChildState.READY
        if child.refresh_reason is None and recycling.watches_memory(self.settings):
            child.checking_memory = True
            self._out.append(ReadMemory(child.pid))

    def _on_exit(self, child: ChildRecord, code: int | None, tail: list, now: float) -> None:
        how = recycling.describe_exit(code)
        cause = child.exit_cause()
        if cause.in_setup:
            message = child.setup_failure(cause, how, self.settings.setup_timeout,
                                          self.shutdown_at is not None)
            if message is not None:
                details = child.setup_error[1] if child.setup_error else ""
                self._setup_failed(message, details, tail)
            return
        if cause.is_death:
            self.breaker.record(now, self.settings.restart_window)
        if cause is ExitCause.CRASHED:
            reason_text = f"the worker process {how} during the job"
        else:
            reason_text = f"the worker process was stopped ({child.stop_text}) during the job"
        for tracked in sorted(self.in_flight.values(), key=lambda t: t.started, reverse=True):
            del self.in_flight[tracked.id]
            text = reason_text
            if cause is ExitCause.CRASHED:
                tracked.crashes += 1
                if tracked.crashes < self.settings.job_max_crashes and self.shutdown_at is None:
                    log.warning("job %s: %s; retrying on a fresh child (%d/%d)", tracked.id,
                                reason_text, tracked.crashes, self.settings.job_max_crashes)
                    self.pending.appendleft(tracked)
                    continue
                if tracked.crashes > 1:
                    text = (f"{reason_text}; it has now killed the worker process "
                            f"{tracked.crashes} times")
            log.error("job %s failed: %s", tracked.id, text)
            self.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST, text, now, "WorkerLost")
        if cause is ExitCause.CRASHED:
            log.error("child %d %s", child.pid, how)
        if cause.is_death and self.breaker.tripped(self.settings.restart_limit):
            self.failure_message = (f"the worker process died {len(self.breaker.deaths)} times "
                                    f"within {self.settings.restart_window:g}s; not respawning "
                                    "(WORKER_RESTART_LIMIT)")
            self._break(self.failure_message, "WorkerBroken")

    # --- endings ------------------------------------------------------------------------

    def _stop_child(self, cause: StopCause, text: str, now: float,
                    interrupt: bool = False) -> None:
        child = self.child
        actions = child.begin_stop(cause, text, now, self.settings.stop_grace, interrupt)
        if actions:
            log.info("stopping child %d: %s", child.pid, text)
            self._out.extend(actions)

    def _abandon(self, tracked: TrackedJob, state: JobState, reason: Reason, text: str,
                 now: float) -> None:
        """End a running job now (timeout or cancel) and make sure its work stops."""
        child = self.child
        del self.in_flight[tracked.id]
        self.log_ids = tuple(self.in_flight)
        error_type = "TimedOut" if state is JobState.TIMED_OUT else "Cancelled"
        self.jobs.end(tracked, state, reason, text, now, error_type)
        if child is None or child.state is ChildState.STOPPING:
            return
        if child.mode is HandlerMode.INLINE:
            self._stop_child(StopCause.JOB_ENDED, f"job {tracked.id} {reason.value}", now,
                             interrupt=True)
            return
        cancel = P.Cancel(tracked.id)
        self._out.append(Send(cancel, cancel.encode()))
        child.cancels[tracked.id] = now + self.settings.stop_grace
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
