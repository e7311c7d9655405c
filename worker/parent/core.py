"""The supervisor's decisions, with no I/O and no clock of its own.

One entry: `handle(event, now) -> actions`. Every input is an event (events.py): a
command from a source, what a child's host saw, the outcome of an action the loop carried
out, the passing of time. The actions (actions.py) are what the loop must do; an action
whose outcome matters (start a child, read memory) is answered by an event on a later
turn. Every job ends in exactly one final state, reported once, through an `Ended` action.
The core owns the jobs and what reaches across children: the queue, dispatch, what a
child's messages and end mean for the jobs in it (results, timeouts, cancels, crash
blame), GPU events and the worker's fate (fate.py). A slot (slots.py) is one place for a
child: its GPUs, its breaker, which child has which role, starting and stopping them. A
child (child.py) is one state machine, the only code that changes it. Here a newcomer
finds dispatch (`_dispatch`), an exit's judgement (`_on_exited` → Slot.exited →
Child.judge, then `_after_exit` for its jobs and `_judged` for the worker) and a refresh
(`_on_refresh` marks each child; `_dispatch` stops a marked idle child through
Slot.refresh_if_idle, where a ready spare takes over). Tests drive the core through the
loop's dispatcher (dispatch.py), on a fake clock.
"""
from __future__ import annotations

import heapq
import logging

from .. import protocol as P
from .. import settings_report
from ..config import Settings
from ..jobs import (JobError, JobResult, JobState, Reason, execution_timeout, ttl as job_ttl,
                    validate_job)
from ..protocol import HandlerMode
from . import blame, gpu_events, placement, recovery, recycling
from . import events as E
from .actions import ChildReady, Chunked, Ended, Progressed, WarmOff
from .causes import ExitCause, StartCause, StopCause, Verdict, VerdictKind
from .child import Child, Role
from .fate import WorkerFate
from .jobbook import JobBook, NoChildClock, TrackedJob, some_id
from .slots import Slot
from .status import Status, WorkerState

log = logging.getLogger("worker")
RESUME_GRACE_S = 1.0          # after the worker was stopped: what its children sent is read


class SupervisorCore:
    def __init__(self, settings: Settings, preload: tuple = (), check_preload: bool = False,
                 devices: list | None = None):
        """`devices`: each child's GPUs (placement.plan); one child, the parent's, if None."""
        self.settings = settings          # the one effective Settings (start() keys applied)
        self.preload, self.check_preload = list(preload), check_preload
        self._out: list = []               # actions of the current step, in order
        self.jobs = JobBook(lambda: self.settings)
        self.pending = self.jobs.pending
        self.expiring: list = []        # heap of (policy.ttl's end, n, job) for queued jobs
        devices = list(devices or [()])
        self.slots = [Slot(i, tuple(d), shared, settings, many=len(devices) > 1)
                      for i, (d, shared) in enumerate(zip(devices, placement.shared(devices)))]
        self.fate = WorkerFate(self.slots, self.jobs, lambda: self.settings)
        self.shutdown_at: float | None = None
        self.warm_off = False              # WarmOff asked: start none until all are gone
        self.last_ready_s: float | None = None
        self.runs = 0                      # run tokens issued (protocol.Run)
        self.cids = 0                      # child numbers issued (Settle, Spawn, events)
        self.handler_kind: P.Kind | None = None
        self.gpu_events: tuple = ()        # the last NVML events: (what, what was done)
        self.no_child = NoChildClock()     # a job's setup wait: how far it moved meanwhile
        self._in_event: bool | None = None   # handling: in the event's own part (True) or the
                                             # step after it (False): recover's scope

    def use_settings(self, settings: Settings) -> None:
        """The effective settings changed (start() keys): every slot uses them at once."""
        self.settings = settings
        for slot in self.slots:
            slot.use_settings(settings)

    state = property(lambda self: self.fate.state)
    failure_message = property(lambda self: self.fate.message)
    # One-child views (a worker with one child; tests).
    child = property(lambda self: self.slots[0].child)
    breaker = property(lambda self: self.slots[0].breaker)

    @property
    def spawns(self) -> int:
        """Children started so far, in every slot."""
        return sum(s.spawns for s in self.slots)

    @property
    def in_flight(self) -> dict:
        """Every job in a child now, by run (a copy: each child owns its own)."""
        return {run: t for slot in self.slots for run, t in slot.in_flight.items()}

    # --- the one entry -------------------------------------------------------------------

    def handle(self, event: E.Event, now: float) -> list:
        self._in_event = True
        self._ON[type(event)](self, event, now)
        if not event.final:
            self._in_event = False
            self._step(now)
        self._in_event = None
        return self._collect()

    def recover(self, event: E.Event, text: str, now: float) -> list:
        """Handling `event` raised (a bug, or input nothing anticipated). What the core
        had not sent yet is dropped, and whoever waited on it is told (the guard's undo);
        recovery.py fails what the event concerns, and the rest goes on. Final reports
        made before the fault still go out."""
        in_event, self._in_event = self._in_event, None
        self._add(())
        dropped = [a for a in self._out if type(a) is not Ended]
        self._out = [a for a in self._out if type(a) is Ended]
        for action in dropped:
            if type(action) is WarmOff:
                self.warm_off = False    # the next child that refuses says it again
            for slot in self.slots:
                slot.forget(action)
        recovery.recover(self, event, text, now, in_event is True)
        self._step(now)
        return self._collect()

    def send(self, actions: list) -> None:
        """Add actions to this step's (recovery's replacements)."""
        self._add(actions)

    def _add(self, actions: list) -> None:
        """The step's next actions, after the final reports made so far: a listener hears
        a job's end before the next job's start, as the events happened."""
        ended = self.jobs.outbox
        if ended:
            self._out += ended
            ended.clear()
        if actions:
            self._out += actions

    def stop_now(self, now: float) -> None:
        """A stop must never be lost, even to a fault (recovery)."""
        if self.shutdown_at is None:
            self.shutdown_at = now

    def _collect(self) -> list:
        out, self._out = self._out, []
        ended = self.jobs.outbox
        if ended:
            out += ended
            ended.clear()
        return out

    # --- from the sources ----------------------------------------------------------------

    def _on_submit(self, ev: E.Submit, now: float) -> None:
        self.jobs.received += 1
        try:
            job = validate_job(ev.job)
        except Exception as exc:    # noqa: BLE001 - JobError, or whatever a strange job raises
            text = str(exc) if isinstance(exc, JobError) else \
                f"the job could not be read: {type(exc).__name__}: {exc}"
            ev.tracked = TrackedJob({"id": some_id(ev.job)}, ev.listener, ev.submitted)
            self.jobs.refuse(ev.tracked, text[:1000])
            return
        ev.tracked = tracked = TrackedJob(job, ev.listener, ev.submitted, ev.raw,
                                          setup_mark=self.no_child.at(now))
        life = job_ttl(job)
        if life is not None:
            tracked.expires = ev.submitted - ev.age + life
            heapq.heappush(self.expiring, (tracked.expires, self.jobs.received, tracked))
        if self.fate.state is not WorkerState.RUNNING or self.shutdown_at is not None:
            self.jobs.refuse(tracked, self.fate.unavailable())
        elif tracked.id in self.jobs.active:
            self.jobs.refuse(tracked, "a job with this id is already queued or running")
        else:
            self.jobs.active[tracked.id] = tracked
            self.pending.append(tracked)

    def _on_cancel(self, ev: E.Cancel, now: float) -> None:
        for tracked in self.pending:
            if tracked.id == ev.job_id:
                self.jobs.unqueue(tracked)
                self.jobs.end(tracked, JobState.CANCELLED, Reason.CANCELLED,
                              "cancelled before it started", now, "Cancelled")
                return
        if not ev.queued_only:
            for slot in self.slots:
                tracked = slot.find(ev.job_id)
                if tracked is not None:
                    self._abandon(slot, tracked, JobState.CANCELLED, Reason.CANCELLED,
                                  "cancelled", now)
                    return

    def _on_refresh(self, ev: E.Refresh, now: float) -> None:
        """Replace every child once it is idle (one being started, once it exists). In
        reload mode, after a setup failure: start again (the code has changed)."""
        if self.settings.reload and self.fate.state is WorkerState.SETUP_FAILED:
            self.fate.revive()
            return
        for slot in self.slots:
            slot.refresh(ev.reason)

    def _on_stop(self, ev: E.Stop, now: float) -> None:
        if self.shutdown_at is None:
            self.shutdown_at = now + max(0.0, ev.grace)
            for tracked in list(self.pending):
                self.jobs.refuse(tracked, "the worker is shutting down")
            self.pending.clear()

    def _on_gpu_event(self, ev: E.GpuEvent, now: float) -> None:
        """An Xid or ECC event from NVML (gpu_events.py says what it means)."""
        judged = gpu_events.judge(ev.xid, ev.what, self.slots)
        for child in judged.busy:
            child.replace_when_idle(f"GPU {judged.label}", StartCause.GPU)
        if judged.application:
            for slot in self.slots:
                self._add(slot.xid(judged.label))
        if judged.action is gpu_events.GpuAction.UNHEALTHY:
            self.fate.broken(f"the GPU is unhealthy ({judged.label})", "GpuUnhealthy",
                             "no more jobs; the platform should replace this worker")
            for slot in self.slots:
                if slot.child is not None:
                    self._add(slot.stop_child(StopCause.GPU_UNHEALTHY, self.fate.message,
                                              now, interrupt=True))
                self._add(slot.stop_spare(StopCause.GPU_UNHEALTHY, judged.label, now))
        self.gpu_events = (*self.gpu_events, (judged.label, judged.shown))[-10:]

    def _on_tick(self, ev: E.Tick, now: float) -> None:
        """Time has passed: the step checks the clocks."""

    # --- a child's start, its messages and its exit -----------------------------------------

    def _on_settled(self, ev: E.Settled, now: float) -> None:
        slot = self.slots[ev.slot]
        if slot.starting != ev.cid:
            return
        if self.fate.state is not WorkerState.RUNNING or self.shutdown_at is not None \
                or self.warm_off:
            slot.give_up_start()           # not now (_ensure_children asks again if needed)
            return
        if not ev.fits:                    # a lost child still holds what a new one needs
            slot.give_up_start()
            self.fate.slot_out(slot, "a worker process here could not be stopped and its "
                               f"GPU memory is not back ({ev.used_mb:.0f} MiB in use): no "
                               "new one starts in its place", WorkerState.BROKEN)
            return
        self._add([slot.settled(ev.used_mb)])

    def _on_spawned(self, ev: E.Spawned, now: float) -> None:
        self._add(self.slots[ev.slot].spawned(ev.cid, ev.pid, now))

    def _on_spawn_failed(self, ev: E.SpawnFailed, now: float) -> None:
        slot = self.slots[ev.slot]
        verdict = slot.spawn_failed(ev.cid, ev.error, ev.transient, ev.short_of_gpu, now)
        if verdict is not None:
            self._judged(slot, verdict)

    def _on_resumed(self, ev: E.Resumed, now: float) -> None:
        """The worker itself was stopped: its children's clocks restart now (a heartbeat
        window), and a job or set-up whose time ran out meanwhile has a second more, for
        what its child sent then (still unread) to be read first."""
        log.warning("the worker itself was stopped for %.1fs: its children's clocks skip it",
                    ev.gap)
        for slot in self.slots:
            slot.resumed(now)
            for tracked in slot.in_flight.values():
                if tracked.deadline is not None and tracked.deadline < now + RESUME_GRACE_S:
                    if tracked.deadline == tracked.expires:      # still named the ttl's end
                        tracked.expires = now + RESUME_GRACE_S
                    tracked.deadline = now + RESUME_GRACE_S

    def _on_message(self, ev: E.Message, now: float) -> None:
        slot = self.slots[ev.slot]
        child = slot.child
        if child is None or child.cid != ev.cid:     # not its active child: which, if any
            child = slot.owns(ev.cid)
        if child is not None and not child.unborn:
            self._heard(slot, child, ev.msg, now)

    def _heard(self, slot: Slot, child: Child, msg: P.Message, now: float) -> None:
        """A message from one of a slot's children."""
        child.heard(now)
        kind = type(msg)
        if kind is P.Heartbeat:
            child.heartbeat(msg)
        elif child.role is Role.SPARE:
            self._add(slot.spare_message(child, msg, now))
        elif child.role is not Role.ACTIVE:
            return                          # a retiring child's words change nothing
        elif kind is P.Done:
            self._done(slot, child, msg, now)
        elif kind is P.Chunk or kind is P.Progress:
            tracked = child.jobs.get(msg.run)
            if tracked is not None:
                told = Chunked if kind is P.Chunk else Progressed
                self._add([told(tracked.listener, tracked.id, msg.value)])
        elif kind is P.Ready or kind is P.SetupFailed or kind is P.WarmRefused:
            if slot.setup_message(child, msg, now):
                self._ready(slot, msg, now)
        elif kind is P.Garbled:
            self._garbled(slot, child, msg, now)

    def _done(self, slot: Slot, child: Child, msg: P.Done, now: float) -> None:
        tracked = child.done(msg)
        slot.finished_a_job()          # this is no storm
        if tracked is None:
            return   # already ended by the worker (timeout, cancel): this is the child's ack
        tracked.suspect = False
        result = tracked.timed(JobResult(tracked.id, msg.state, msg.reason, msg.body,
                                         msg.refresh), now)
        if msg.peak_vram_mb is not None:
            result.extra["peak_vram_mb"] = msg.peak_vram_mb
        self.jobs.report(tracked, result)      # logged with its times by the loop
        verdict = recycling.after_job(result, child, self.settings)
        if verdict is not None:
            child.replace_when_idle(*verdict)
        actions = slot.idle(child)
        if actions:
            self._add(actions)

    def _garbled(self, slot: Slot, child: Child, msg: P.Garbled, now: float) -> None:
        """A frame from the child that the parent cannot read. A result or chunk names its
        run: that job fails (its output cannot be delivered as it is); anything else means
        the channel cannot be trusted, so the child is replaced."""
        log.error("unreadable %s message from child %d: %s", msg.tag or "unknown", child.pid,
                  msg.error)
        claims = msg.claims
        if claims is P.Done:
            tracked = child.unreadable_done(msg.run)
            if tracked is not None:
                self.jobs.end(tracked, JobState.FAILED, Reason.HANDLER_ERROR,
                              f"the job's result could not be read by the worker: "
                              f"{msg.error}", now, "ResultUnreadable")
                self._add(slot.idle(child))
        elif claims is P.Chunk or claims is P.Progress:
            tracked = child.jobs.get(msg.run) if msg.run is not None else None
            if tracked is not None and claims is P.Chunk:   # a stream with a hole is not one
                self._abandon(slot, tracked, JobState.FAILED, Reason.HANDLER_ERROR,
                              f"a stream chunk could not be read by the worker: {msg.error}",
                              now, "ChunkUnreadable")
        elif claims is not P.Heartbeat and not child.stopping:
            self._add(slot.stop_child(StopCause.PROTOCOL, f"unreadable message: {msg.error}",
                                      now, interrupt=True))

    def _abandon(self, slot: Slot, tracked: TrackedJob, state: JobState, reason: Reason,
                 text: str, now: float, error_type: str | None = None) -> None:
        """End a running job now (timeout, cancel, an unreadable chunk) and make sure its
        work stops: the child is told to cancel it, or, when the handler runs inline (or
        the child is already stopping), stopped."""
        child = slot.active
        if error_type is None:
            error_type = "TimedOut" if state is JobState.TIMED_OUT else "Cancelled"
        if child.stopping or child.mode is HandlerMode.INLINE:
            child.drop_run(tracked.run, None if child.stopping else
                           StartCause.TIMEOUT if state is JobState.TIMED_OUT
                           else StartCause.CANCEL)
            self.jobs.end(tracked, state, reason, text, now, error_type)
            if not child.stopping:
                self._add(slot.stop_child(StopCause.JOB_ENDED,
                                          f"job {tracked.id} {reason.value}", now,
                                          interrupt=True))
            return
        actions = child.abandon(tracked.run, now, self.settings.stop_grace)
        self.jobs.end(tracked, state, reason, text, now, error_type)
        self._add(actions)

    def _lose(self, jobs: list, reason_text: str, now: float) -> None:
        """Jobs whose child is gone fail (WORKER_LOST)."""
        for tracked in jobs:
            text = reason_text
            if tracked.crashes > 1:
                text = (f"{reason_text}; it has now killed the worker process "
                        f"{tracked.crashes} times")
            log.error("job %s failed: %s", tracked.id, text)
            self.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST, text, now,
                          "WorkerLost")

    def _on_memory_read(self, ev: E.MemoryRead, now: float) -> None:
        self.slots[ev.slot].memory_read(ev.cid, ev.reading)

    def _on_exited(self, ev: E.Exited, now: float) -> None:
        slot = self.slots[ev.slot]
        child = slot.owns(ev.cid)
        if child is None or child.unborn:
            return                          # a child the core already let go of
        if slot.holds(ev.cid):
            for msg in ev.messages:         # its last words: results written still count
                self._heard(slot, child, msg, now)
        active = child.role is Role.ACTIVE
        end, verdict = slot.exited(child, ev.code, now, self.shutdown_at is not None)
        if active:
            self._after_exit(slot, child, end, ev.tail, now)
        if verdict is not None:
            self._judged(slot, verdict)

    def _after_exit(self, slot: Slot, child: Child, end, tail: list, now: float) -> None:
        """The active child is gone: its jobs fail or, after a crash, run again
        (blame.py); a set-up that failed or a warm import refused is the worker's."""
        jobs = child.let_go()
        s = self.settings
        if end.cause is ExitCause.WARM_REFUSED or end.cause.in_setup:
            self._lose(jobs, f"the worker process {end.how}", now)   # none: it never was ready
            if end.cause is ExitCause.WARM_REFUSED:
                self._judged(slot, Verdict(VerdictKind.WARM_REFUSED, end.warm_refused))
            elif end.setup_failure is not None:
                self._judged(slot, Verdict(VerdictKind.SETUP_FAILED, end.setup_failure,
                                           end.details, tuple(tail)))
            return
        if end.cause is ExitCause.CRASHED:
            reason_text = f"the worker process {end.how} during the job"
            again, failed = blame.after_crash(jobs, s.job_max_crashes,
                                              self.shutdown_at is not None)
            for tracked in reversed(again):
                log.warning("job %s: %s; running it again, alone, on a fresh child%s",
                            tracked.id, reason_text, "" if len(jobs) > 1 else
                            f" ({tracked.crashes}/{s.job_max_crashes})")
                self.pending.appendleft(tracked)
        else:
            reason_text = f"the worker process was stopped ({child.stop_text}) during the job"
            failed = jobs
        self._lose(failed, reason_text, now)
        if end.cause is ExitCause.CRASHED:
            log.error("child %d%s %s", child.pid, slot.label(), end.how)
            slot.crashed_unspared()

    def _judged(self, slot: Slot, verdict) -> None:
        """What a child's end means for the worker."""
        if verdict.kind is VerdictKind.WARM_REFUSED:
            if not self.warm_off:     # every child of that forkserver says the same
                log.warning("warm refresh refused: %s; children start cold (the forkserver "
                            "is restarted without the handler module)", verdict.message)
                self._add([WarmOff(verdict.message)])
            self.warm_off = True
        elif verdict.kind is VerdictKind.SETUP_FAILED:
            self.fate.child_setup_failed(slot, verdict.message, verdict.details, verdict.tail)
        else:
            self.fate.slot_out(slot, verdict.message, WorkerState.BROKEN)

    def _ready(self, slot: Slot, msg: P.Ready, now: float) -> None:
        """A child passed setup: what that means for the worker."""
        child = slot.child
        for other in self.slots:       # out before any child was ready: worth a new try
            if other.revivable:
                other.revive()
        self.handler_kind = msg.kind
        self.use_settings(settings_report.on_ready(self.settings, msg.config or {}, msg.notes))
        self.last_ready_s = now - child.started
        slot.spares.first_setup(self.last_ready_s)
        self._add([ChildReady(slot.index, self.last_ready_s)])
        log.info("child %d%s ready in %.2fs (handler: %s, %s, concurrency %d%s)",
                 child.pid, slot.label(), self.last_ready_s, msg.kind.value,
                 msg.mode.value, child.concurrency,
                 f"; preloaded: {', '.join(msg.preloaded[:6])}" + (
                     f" and {len(msg.preloaded) - 6} more" if len(msg.preloaded) > 6 else "")
                 if msg.preloaded else "")
        missing = [m for m in self.preload if m not in msg.preloaded]
        if missing and self.check_preload:
            log.warning("preload modules not loaded in the forkserver (import failed?): %s",
                        ", ".join(missing))

    # --- the loop's end ------------------------------------------------------------------

    def _on_loop_failed(self, ev: E.LoopFailed, now: float) -> None:
        self.fate.loop_failed(ev.text)

    def _on_loop_ended(self, ev: E.LoopEnded, now: float) -> None:
        self.fate.loop_ended()

    _ON = {E.Submit: _on_submit, E.Cancel: _on_cancel, E.Refresh: _on_refresh,
           E.Stop: _on_stop, E.GpuEvent: _on_gpu_event, E.Tick: _on_tick,
           E.Settled: _on_settled, E.Spawned: _on_spawned, E.SpawnFailed: _on_spawn_failed,
           E.Message: _on_message, E.MemoryRead: _on_memory_read, E.Exited: _on_exited,
           E.LoopFailed: _on_loop_failed, E.LoopEnded: _on_loop_ended, E.Resumed: _on_resumed}

    # --- queries -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Shut down, with no child left: the loop may end."""
        return self.shutdown_at is not None and not any(s.children() for s in self.slots)

    def unfinished(self) -> list:
        """Every job held and not ended (for the loop's very last resort)."""
        return [t for t in self.jobs.active.values() if not t.finished]

    def next_deadline(self) -> float | None:
        heartbeat, shutdown_at = self.settings.heartbeat_timeout, self.shutdown_at
        times = [t for s in self.slots for t in s.deadlines(heartbeat, shutdown_at)]
        times += [t.deadline for s in self.slots for t in s.in_flight.values()
                  if t.deadline is not None]
        if self.expiring:
            times.append(self.expiring[0][0])
        return min(times) if times else None

    def _expire(self, tracked: TrackedJob, now: float) -> None:
        """A queued job whose policy.ttl ran out: it ends TIMED_OUT without running."""
        self.jobs.unqueue(tracked)
        life = job_ttl(tracked.job) or 0.0
        self.jobs.end(tracked, JobState.TIMED_OUT, Reason.TIMED_OUT,
                      f"the job's policy.ttl of {life:g}s ran out before it started", now,
                      "TimedOut")

    def status(self) -> Status:
        fate = self.fate
        running = fate.state is WorkerState.RUNNING and self.shutdown_at is None
        return Status(settings=self.settings, state=fate.state, failure=fate.message,
                      kind=self.handler_kind,
                      children=tuple(s.view(running) for s in self.slots),
                      spawns=self.spawns, pending=len(self.pending),
                      finished=self.jobs.finished, last_ready_s=self.last_ready_s,
                      gpu_events=self.gpu_events, received=self.jobs.received)

    # --- the step after every event ---------------------------------------------------

    def _step(self, now: float) -> None:
        self.no_child.update(any(s.child is not None and s.child.live for s in self.slots),
                             now)
        shutdown_at = self.shutdown_at
        for slot in self.slots:
            if slot.in_flight:
                self._check_deadlines(slot, now)
            actions, lost = slot.check_clocks(now, shutdown_at)
            if actions:
                self._add(actions)
            if lost is not None:
                verdict = slot.lost(lost, now)
                self._lose(lost.let_go(), f"the worker process could not be stopped "
                                          f"({lost.stop_text}) and was declared lost", now)
                if verdict is not None:
                    self._judged(slot, verdict)
        while self.expiring and now >= self.expiring[0][0]:
            tracked = heapq.heappop(self.expiring)[2]
            if not (tracked.finished or tracked.started):     # still queued: it ends here
                self._expire(tracked, now)
        self._ensure_children(now)
        self._dispatch(now)
        if self.finished:            # no child will come for what is still queued
            for tracked in self.pending:
                self.jobs.refuse(tracked, "the worker is shutting down")
            self.pending.clear()

    def _check_deadlines(self, slot: Slot, now: float) -> None:
        """Jobs in the slot's child past their execution timeout or policy.ttl."""
        for tracked in list(slot.in_flight.values()):
            if tracked.deadline is not None and now >= tracked.deadline:
                ran = tracked.deadline - tracked.started
                text = f"the job ran longer than its execution timeout of " \
                    f"{execution_timeout(tracked.job, self.settings.job_timeout):g}s" \
                    if tracked.deadline != tracked.expires else \
                    f"the job's policy.ttl ran out after {ran:g}s of running"
                self._abandon(slot, tracked, JobState.TIMED_OUT, Reason.TIMED_OUT, text, now)

    def _ensure_children(self, now: float) -> None:
        if self.fate.state is not WorkerState.RUNNING or self.shutdown_at is not None:
            return
        for slot in self.slots:              # a ready spare fills a vacancy at once
            if slot.child is None and slot.spare_ready and slot.out is None:
                slot.promote(now)
        if self.warm_off:     # the forkserver restarts cold only with no child alive
            if any(s.active is not None for s in self.slots):
                return
            self.warm_off = False
        for slot in self.slots:
            if slot.wants_child:
                self.cids += 1
                self._add([slot.ask_child(self.cids)])
            elif slot.out is None and slot.wants_spare:
                self.cids += 1
                self._add([slot.ask_spare(self.cids)])

    def _dispatch(self, now: float) -> None:
        for slot in self.slots:
            actions = slot.refresh_if_idle(now)
            if actions:
                self._add(actions)
        if not self.pending or self.shutdown_at is not None:
            return
        open_slots = [s for s in self.slots if s.room() > 0]
        while self.pending and open_slots:
            if len(open_slots) > 1:      # the least loaded, then the longest idle, first
                open_slots.sort(key=lambda s: (len(s.in_flight) / s.child.concurrency,
                                               s.last_run))
            for slot in open_slots:
                child = slot.child
                i = blame.next_runnable(self.pending, child.jobs.values(),
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
        if tracked.expires is not None and now >= tracked.expires:
            self._expire(tracked, now)
            return
        tracked.started = now
        tracked.setup_wait = self.no_child.at(now) - tracked.setup_mark
        limit = execution_timeout(tracked.job, self.settings.job_timeout)
        tracked.deadline = now + limit if limit > 0 else None
        if tracked.expires is not None and (tracked.deadline is None
                                            or tracked.expires < tracked.deadline):
            tracked.deadline = tracked.expires     # _check_deadlines names the ttl
        self.runs += 1
        tracked.run = self.runs
        msg = P.Run(tracked.run, tracked.job, tracked.raw)
        try:
            data = msg.encode()
        except Exception as exc:   # noqa: BLE001 - not JSON, a lone surrogate, too deep...
            self.jobs.refuse(tracked, f"the job cannot be sent to the worker process: "
                                      f"{type(exc).__name__}: {exc}"[:1000])
            return
        self._add(slot.start(tracked, msg, data))
