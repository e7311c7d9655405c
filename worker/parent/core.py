"""The supervisor's decisions, with no I/O and no clock of its own.

One entry: `handle(event, now) -> actions`. Every input is an event (events.py): a
command from a source, what a child's host saw, the outcome of an action the loop carried
out, the passing of time. The actions (actions.py) are what the loop must do; an action
whose outcome matters (start a child, read memory) is answered by an event on a later
turn. Every job ends in exactly one final state, reported once, through an `Ended` action.
The core owns what reaches across children (the queue, dispatch, the worker's fate, GPU
events); a slot (slots.py) holds which child has which role and applies what a child's
messages and exit mean for its jobs; a child (child.py) is one state machine, the only
code that changes it. Here a newcomer finds dispatch (`_dispatch`), an exit's judgement
(`_on_exited` → Slot.exited → Child.judge) and a refresh (`_on_refresh` → a child marked
→ `_step` stops it once idle, and a ready spare takes over). Tests drive the core through
the loop's dispatcher (dispatch.py), on a fake clock.
"""
from __future__ import annotations

import heapq
import logging

from .. import protocol as P
from .. import settings_report
from ..config import Settings
from ..jobs import JobError, JobState, Reason, execution_timeout, ttl as job_ttl, validate_job
from . import blame, gpu_events, placement, recovery
from . import events as E
from .actions import ChildReady, Ended, WarmOff
from .causes import StartCause, StopCause, VerdictKind
from .fate import WorkerFate
from .jobbook import JobBook, NoChildClock, TrackedJob, some_id
from .slots import Slot
from .status import Status, WorkerState

log = logging.getLogger("worker")


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
        self.slots = [Slot(i, tuple(d), shared, self.jobs, settings, many=len(devices) > 1)
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
        self._phase: str | None = None     # "event" or "step" while handling: recover's scope

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
        self._phase = "event"
        self._ON[type(event)](self, event, now)
        if not event.final:
            self._phase = "step"
            self._step(now)
        self._phase = None
        return self._take()

    def recover(self, event: E.Event, text: str, now: float) -> list:
        """Handling `event` raised (a bug, or input nothing anticipated). What the core
        had not sent yet is dropped, and whoever waited on it is told (the guard's undo);
        recovery.py fails what the event concerns, and the rest goes on. Final reports
        made before the fault still go out."""
        phase, self._phase = self._phase, None
        self._add(())
        dropped = [a for a in self._out if type(a) is not Ended]
        self._out = [a for a in self._out if type(a) is Ended]
        for action in dropped:
            if type(action) is WarmOff:
                self.warm_off = False    # the next child that refuses says it again
            for slot in self.slots:
                slot.forget(action)
        recovery.recover(self, event, text, now, phase == "event")
        self._step(now)
        return self._take()

    def send(self, actions: list) -> None:
        """Add actions to this step's (recovery's replacements)."""
        self._add(actions)

    def _add(self, actions: list) -> None:
        """The step's next actions, after the final reports made so far: a listener hears
        a job's end before the next job's start, as the events happened."""
        ended = self.jobs.take_ended()
        if ended:
            self._out += ended
        if actions:
            self._out += actions

    def stop_now(self, now: float) -> None:
        """A stop must never be lost, even to a fault (recovery)."""
        if self.shutdown_at is None:
            self.shutdown_at = now

    def _take(self) -> list:
        self._add(())
        out, self._out = self._out, []
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
                    self._add(slot.abandon(tracked, JobState.CANCELLED, Reason.CANCELLED,
                                           "cancelled", now))
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
        log.warning("the worker itself was stopped for %.1fs: its children's clocks skip it",
                    ev.gap)
        for slot in self.slots:
            slot.resumed(now)

    def _on_message(self, ev: E.Message, now: float) -> None:
        slot = self.slots[ev.slot]
        child = slot.owns(ev.cid)
        if child is not None and not child.phase.unborn:
            self._heard(slot, child, ev.msg, now)

    def _heard(self, slot: Slot, child, msg: P.Message, now: float) -> None:
        actions, ready = slot.message(child, msg, now)
        self._add(actions)
        if ready:
            self._ready(slot, msg, now)

    def _on_memory_read(self, ev: E.MemoryRead, now: float) -> None:
        self.slots[ev.slot].memory_read(ev.cid, ev.reading)

    def _on_exited(self, ev: E.Exited, now: float) -> None:
        slot = self.slots[ev.slot]
        child = slot.owns(ev.cid)
        if child is None or child.phase.unborn:
            return                          # a child the core already let go of
        if slot.holds(ev.cid):
            for msg in ev.messages:         # its last words: results written still count
                self._heard(slot, child, msg, now)
        verdict = slot.exited(child, ev.code, ev.tail, now, self.shutdown_at is not None)
        if verdict is not None:
            self._judged(slot, verdict)

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
        return Status(self.settings, fate.state, fate.message, self.handler_kind,
                      tuple(s.view(running) for s in self.slots), self.spawns,
                      len(self.pending), self.jobs.finished, self.last_ready_s,
                      self.gpu_events, self.jobs.received)

    # --- the step after every event ---------------------------------------------------

    def _step(self, now: float) -> None:
        self.no_child.update(any(s.child is not None and s.child.live for s in self.slots),
                             now)
        shutdown_at = self.shutdown_at
        for slot in self.slots:
            actions, verdict = slot.check_clocks(now, shutdown_at)
            self._add(actions)
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
            elif slot.out is None and self._wants_spare(slot):
                self.cids += 1
                self._add([slot.ask_spare(self.cids)])

    def _wants_spare(self, slot: Slot) -> bool:
        """A spare now? Only beside a live active child, with none being built or retiring,
        past a failure's backoff."""
        active = slot.child
        return (active is not None and active.live and slot.spare is None
                and not slot.retiring and slot.spares.retry_at is None
                and slot.spares.enabled(self.settings, slot.devices))

    def _dispatch(self, now: float) -> None:
        for slot in self.slots:
            self._add(slot.refresh_if_idle(now))
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
            tracked.deadline = tracked.expires     # slots.check_clocks names the ttl
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
