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
from . import placement
from .child_events import ChildEvents
from .failures import Failures
from .jobbook import JobBook, TrackedJob
from .lifecycle import LIVE_STATES, ChildRecord, ChildState, StopCause
from .monitor import classify_xid
from .slots import NoChildClock, Slot
from .status import ChildView, Status, WorkerState

log = logging.getLogger("worker")


class SupervisorCore(ChildEvents, Failures):
    def __init__(self, settings: Settings, preload: tuple = (), check_preload: bool = False,
                 devices: list | None = None):
        """`devices`: each child's GPUs (placement.plan), one entry per child; one child
        with the parent's devices when not given."""
        self.settings = settings          # the one effective Settings (start() keys applied)
        self.preload = list(preload)
        self.check_preload = check_preload
        self.state = WorkerState.RUNNING
        self.failure_message: str | None = None
        devices = list(devices or [()])
        self.slots = [Slot(i, tuple(d), shared) for i, (d, shared)
                      in enumerate(zip(devices, placement.shared(devices)))]
        self._out: list = []               # actions of the current step
        self.jobs = JobBook(self._out, lambda: self.settings)
        self.pending = self.jobs.pending
        self.shutdown_at: float | None = None
        self.warm_off = False              # WarmOff asked: start none until all are gone
        self.last_ready_s: float | None = None
        self.runs = 0                      # run tokens issued (protocol.Run)
        self.handler_kind: P.Kind | None = None
        self.gpu_events: tuple = ()        # the last NVML events: (what, what was done)
        self.no_child = NoChildClock()     # a job's setup wait: how far it moved meanwhile

    # One-child views (a worker with one child; tests).
    child = property(lambda self: self.slots[0].child)
    breaker = property(lambda self: self.slots[0].breaker)

    @property
    def spawns(self) -> int:
        """Children started so far, in every slot."""
        return sum(s.spawns for s in self.slots)

    @property
    def in_flight(self) -> dict:
        """Every job in a child now, by run (a copy: each slot owns its own)."""
        return {run: t for slot in self.slots for run, t in slot.in_flight.items()}

    # --- events ------------------------------------------------------------------------

    def submit(self, given: Any, listener: JobListener, submitted: float,
               raw: Any, now: float) -> list:
        self.jobs.received += 1
        try:
            job = validate_job(given)
        except Exception as exc:    # noqa: BLE001 - JobError, or whatever a strange job raises
            text = str(exc) if isinstance(exc, JobError) else \
                f"the job could not be read: {type(exc).__name__}: {exc}"
            self.jobs.refuse(TrackedJob({"id": _some_id(given)}, listener, submitted),
                             text[:1000])
            return self._step(now)
        tracked = TrackedJob(job, listener, submitted, raw,
                             setup_mark=self.no_child.at(now))
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
        if not queued_only:
            for slot in self.slots:
                tracked = slot.find(job_id)
                if tracked is not None:
                    self._abandon(slot, tracked, JobState.CANCELLED, Reason.CANCELLED,
                                  "cancelled", now)
                    break
        return self._step(now)

    def refresh(self, reason: str, now: float) -> list:
        """Replace every child once it is idle."""
        for slot in self.slots:
            if slot.child is not None:
                slot.child.replace_when_idle(reason, "refresh")
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
        put on the children that could have caused it, the ones running jobs now."""
        kind = classify_xid(xid) if what == "xid" else "unhealthy"
        label = f"Xid {xid}" if what == "xid" else what
        if kind == "note":
            action = "noted"
            log.info("GPU reported %s: recorded by the driver, nothing to do", label)
        elif kind == "replace":
            live = [s.child for s in self.slots if s.child is not None
                    and s.child.refresh_reason is None and not s.child.stop_cause]
            busy = [c for c in live if c.jobs_run or self.slots[c.slot].in_flight]
            if not live:
                action = "ignored: the worker process is already being replaced"
            elif not busy:
                action = "ignored: it belongs to a worker process already replaced"
            else:
                action = "replace"
                log.warning("GPU reported application %s: the CUDA context of worker "
                            "process %s is poisoned; replacing it after the running job",
                            label, ", ".join(str(c.pid) for c in busy))
                for child in busy:
                    child.replace_when_idle(f"GPU {label}", "gpu")
            if action != "replace":
                log.info("GPU reported application %s, %s", label, action[9:])
        else:
            action = "unhealthy"
            self.failure_message = f"the GPU is unhealthy ({label})"
            self._break(self.failure_message, "GpuUnhealthy",
                        "no more jobs; the platform should replace this worker")
            for slot in self.slots:
                if slot.child is not None:
                    self._stop_child(slot, StopCause.GPU_UNHEALTHY, self.failure_message,
                                     now, interrupt=True)
        self.gpu_events = (*self.gpu_events, (label, action))[-10:]
        return self._step(now)

    def spawned(self, index: int, pid: int, baseline_mb: float, now: float) -> list:
        s = self.settings
        slot = self.slots[index]
        slot.spawning = False
        slot.spawns += 1
        slot.child = ChildRecord(pid, now, now + s.setup_timeout if s.setup_timeout > 0
                                 else None, last_beat=now, baseline_mb=baseline_mb,
                                 slot=index)
        return self._step(now)

    def spawn_skipped(self, index: int, now: float) -> list:
        """The loop did not start the child it was asked for: the worker is stopping."""
        self.slots[index].spawning = False
        return self._step(now)

    def spawn_failed(self, index: int, error: str, now: float) -> list:
        slot = self.slots[index]
        slot.spawning = False
        self._child_setup_failed(slot, f"the worker process could not be started: {error}",
                                 "", [])
        return self._step(now)

    def memory(self, index: int, reading: Any, now: float) -> list:
        """The reading asked for with ReadMemory (None if the probe failed), of the
        slot's child and its GPUs."""
        slot = self.slots[index]
        child = slot.child
        if child is not None and child.checking_memory:
            child.checking_memory = False
            if reading is not None and child.refresh_reason is None:
                child.replace_when_idle(recycling.memory_verdict(
                    reading, child, self.settings, own_only=slot.shared), "memory")
        return self._step(now)

    def tick(self, now: float) -> list:
        """Time has passed (also the first event: it asks for the first children)."""
        return self._step(now)

    def fail_everything(self, error_type: str, text: str) -> list:
        """The loop itself failed: every job still held ends now."""
        self._fail_all(Reason.REFUSED, error_type, text)
        out = self._out[:]
        self._out.clear()
        return out

    def internal_error(self, text: str, job: Any, listener: JobListener | None,
                       now: float) -> list:
        """An event raised inside the core (a bug, or input nothing anticipated). The job
        it carried, if any, fails; the children, whose jobs may have been left
        half-handled, are replaced with them failed; queued jobs go on."""
        self._out.clear()
        held = [*self.pending, *self.in_flight.values()]
        if listener is not None and not any(t.listener is listener and t.job is job
                                            for t in held):
            tracked = TrackedJob({"id": _some_id(job)}, listener, now)
            self.jobs.refuse(tracked, f"the worker failed on this job: {text}"[:1000],
                             counted=False)
        for slot in self.slots:
            for tracked in list(slot.in_flight.values()):
                self.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST,
                              f"the worker failed while this job ran: {text}"[:1000], now,
                              "WorkerError")
            slot.in_flight.clear()
            slot.log_ids = ()
            if slot.child is not None and slot.child.state is not ChildState.STOPPING:
                self._stop_child(slot, StopCause.INTERNAL_ERROR, "internal error", now,
                                 interrupt=True)
        return self._step(now)

    # --- queries -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Shut down, with no child left: the loop may end."""
        return self.shutdown_at is not None and not any(
            s.child is not None or s.spawning for s in self.slots)

    def next_deadline(self) -> float | None:
        times = []
        heartbeat = self.settings.heartbeat_timeout
        for slot in self.slots:
            times.extend(t.deadline for t in slot.in_flight.values() if t.deadline is not None)
            child = slot.child
            if child is not None:
                times.append(child.deadline(heartbeat))
                if self.shutdown_at is not None:
                    times.append(self.shutdown_at)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def status(self) -> Status:
        running = self.state is WorkerState.RUNNING and self.shutdown_at is None
        return Status(self.settings, self.state, self.failure_message, self.handler_kind,
                      tuple(_view(s, running) for s in self.slots), self.spawns,
                      len(self.pending), self.jobs.finished, self.last_ready_s,
                      self.gpu_events, self.jobs.received)

    # --- the step after every event ---------------------------------------------------

    def _step(self, now: float) -> list:
        self.no_child.update(any(s.child is not None and s.child.state in LIVE_STATES
                                 for s in self.slots), now)
        self._check_clocks(now)
        self._ensure_children()
        self._dispatch(now)
        if self.finished:            # no child will come for what is still queued
            for tracked in self.pending:
                self.jobs.refuse(tracked, "the worker is shutting down")
            self.pending.clear()
        out = self._out[:]
        self._out.clear()
        return out

    def _ensure_children(self) -> None:
        if self.state is not WorkerState.RUNNING or self.shutdown_at is not None:
            return
        if self.warm_off:     # the forkserver restarts cold only with no child alive
            if any(s.child is not None or s.spawning for s in self.slots):
                return
            self.warm_off = False
        for slot in self.slots:
            if slot.child is None and not slot.spawning and slot.out is None:
                slot.spawning = True
                self._out.append(Spawn(slot.index, slot.env(), checks=not slot.ever_ready,
                                       cause=slot.next_cause if slot.spawns else "first"))

    def _dispatch(self, now: float) -> None:
        for slot in self.slots:
            child = slot.child
            if child is not None and child.live and child.refresh_reason \
                    and not slot.in_flight and not child.checking_memory:
                log.info("refreshing the worker process%s: %s", slot.label(self.slots),
                         child.refresh_reason)
                self._stop_child(slot, StopCause.REFRESH, f"refresh: {child.refresh_reason}",
                                 now)
        if not self.pending or self.shutdown_at is not None:
            return
        open_slots = [s for s in self.slots if s.room() > 0]
        while self.pending and open_slots:
            if len(open_slots) > 1:      # the least loaded, then the longest idle, first
                open_slots.sort(key=lambda s: (len(s.in_flight) / s.child.concurrency,
                                               s.last_run))
            for slot in open_slots:
                child = slot.child
                i = blame.next_runnable(self.pending, slot.in_flight.values(),
                                        child.abandoned_ids if child.cancels else ())
                if i is not None:
                    tracked = self.pending[i]
                    del self.pending[i]
                    self._start(slot, tracked, now)
                    if slot.room() <= 0:
                        open_slots.remove(slot)
                    break
            else:
                return

    def _start(self, slot: Slot, tracked: TrackedJob, now: float) -> None:
        tracked.started = now
        tracked.setup_wait = self.no_child.at(now) - tracked.setup_mark
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
            return
        self._out.append(Send(msg, data, slot.index))
        slot.in_flight[tracked.run] = tracked
        slot.last_run = tracked.run
        slot.log_ids = slot.running_ids()
        slot.child.state = ChildState.BUSY
        self._out.append(Started(tracked.listener, tracked.id))

    def _check_clocks(self, now: float) -> None:
        s = self.settings
        for slot in self.slots:
            for tracked in list(slot.in_flight.values()):
                if tracked.deadline is not None and now >= tracked.deadline:
                    limit = tracked.deadline - tracked.started
                    self._abandon(slot, tracked, JobState.TIMED_OUT, Reason.TIMED_OUT,
                                  f"the job ran longer than its execution timeout of "
                                  f"{limit:g}s", now)
            child = slot.child
            if child is None:
                continue
            due = child.due(now, s.stop_grace, s.heartbeat_timeout, self.shutdown_at,
                            busy=bool(slot.in_flight))
            if isinstance(due, Signal):
                log.warning("child %d did not stop within %.1fs; sending %s to its process "
                            "group", child.pid, s.stop_grace, due.sig.name)
                self._out.append(due)
            elif due is not None:
                cause, text, interrupt = due
                self._stop_child(slot, cause, text, now, interrupt)

    # --- endings ------------------------------------------------------------------------

    def _stop_child(self, slot: Slot, cause: StopCause, text: str, now: float,
                    interrupt: bool = False) -> None:
        child = slot.child
        actions = child.begin_stop(cause, text, now, self.settings.stop_grace, interrupt)
        if actions:
            log.info("stopping child %d: %s", child.pid, text)
            self._out.extend(actions)

    def _abandon(self, slot: Slot, tracked: TrackedJob, state: JobState, reason: Reason,
                 text: str, now: float, error_type: str | None = None) -> None:
        """End a running job now (timeout or cancel) and make sure its work stops."""
        child = slot.child
        del slot.in_flight[tracked.run]
        slot.log_ids = slot.running_ids()
        if error_type is None:
            error_type = "TimedOut" if state is JobState.TIMED_OUT else "Cancelled"
        self.jobs.end(tracked, state, reason, text, now, error_type)
        if child is None or child.state is ChildState.STOPPING:
            return
        if child.mode is HandlerMode.INLINE:
            child.restart_as = "timeout" if state is JobState.TIMED_OUT else "cancel"
            self._stop_child(slot, StopCause.JOB_ENDED, f"job {tracked.id} {reason.value}",
                             now, interrupt=True)
            return
        cancel = P.Cancel(tracked.run)
        self._out.append(Send(cancel, cancel.encode(), slot.index))
        child.cancels[tracked.run] = (tracked.id, now + self.settings.stop_grace)
        if not slot.in_flight and child.state is ChildState.BUSY:
            child.state = ChildState.READY

def _view(slot: Slot, running: bool) -> ChildView:
    c = slot.child
    return ChildView(slot.index, slot.devices, c.pid if c else None, c.state if c else None,
                     c.mode if c else None, c.concurrency if c else 1,
                     c.concurrency if running and c is not None and c.accepting else 0,
                     tuple(c.preloaded) if c else (), c.jobs_run if c else 0,
                     c.rss if c else 0, c.torch if c else None, c.baseline_mb if c else 0.0,
                     slot.running_ids(), slot.log_ids, slot.out, slot.spawns,
                     len(slot.breaker.deaths))


def _some_id(job: Any) -> str:
    """The job's id for a refusal, when it is one that may go into URLs and logs."""
    try:
        job_id = job.get("id") if isinstance(job, dict) else None
    except Exception:   # noqa: BLE001 - a dict subclass that fails even here
        job_id = None
    return job_id if isinstance(job_id, str) and SAFE_ID.fullmatch(job_id) else "unknown"
