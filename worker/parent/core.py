"""The supervisor's decisions, with no I/O and no clock of its own.

One entry: `handle(event, now) -> actions`. Every input is an event (events.py): a
command from a source, what a child's host saw, the outcome of an action the loop carried
out, the passing of time. The actions (actions.py) are what the loop must do; an action
whose outcome matters (start a child, read memory) is answered by an event on a later
turn. Every job ends in exactly one final state, reported once, through an `Ended` action.
The core owns what reaches across children (the queue, dispatch, the worker's state, GPU
events); what touches one child only is its slot's (slots.py). Tests drive the core
through the loop's dispatcher (dispatch.py), on a fake clock.
"""
from __future__ import annotations

import heapq
import logging
import signal

from .. import protocol as P
from .. import settings_report
from ..config import Settings
from ..jobs import JobError, JobState, Reason, execution_timeout, ttl as job_ttl, validate_job
from . import blame, gpu_events, placement, recovery, recycling
from . import events as E
from .actions import ChildReady, Settle, Signal, Spawn, WarmOff
from .jobbook import JobBook, NoChildClock, TrackedJob, some_id
from .lifecycle import LIVE_STATES, StopCause
from .fate import WorkerFate
from .slots import Slot
from .status import Status, WorkerState

log = logging.getLogger("worker")


class SupervisorCore:
    def __init__(self, settings: Settings, preload: tuple = (), check_preload: bool = False,
                 devices: list | None = None):
        """`devices`: each child's GPUs (placement.plan); one child, the parent's, if None."""
        self.settings = settings          # the one effective Settings (start() keys applied)
        self.preload, self.check_preload = list(preload), check_preload
        self._actions: list = []           # actions of the current step (shared, in place)
        self.jobs = JobBook(self._actions, lambda: self.settings)
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
            slot.settings = settings

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
        """Every job in a child now, by run (a copy: each slot owns its own)."""
        return {run: t for slot in self.slots for run, t in slot.in_flight.items()}

    # --- the one entry -------------------------------------------------------------------

    def handle(self, event: E.Event, now: float) -> list:
        self._phase = "event"
        self._ON[type(event)](self, event, now)
        if event.final:
            self._phase = None
            return self._take()
        self._phase = "step"
        out = self._step(now)
        self._phase = None
        return out

    def recover(self, event: E.Event, text: str, now: float) -> list:
        """Handling `event` raised (a bug, or input nothing anticipated): recovery.py
        fails what it concerns, and the rest goes on."""
        recovery.recover(self, event, text, now)
        return self._step(now)

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
                    slot.abandon(tracked, JobState.CANCELLED, Reason.CANCELLED, "cancelled", now)
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
        label, action, busy = gpu_events.judge(ev.xid, ev.what, self.slots)
        for child in busy:
            child.replace_when_idle(f"GPU {label}", "gpu")
        if action == "replace" or action.startswith("ignored"):    # an application Xid
            for slot in self.slots:
                self._actions.extend(slot.spares.xid(label))
        if action == "unhealthy":
            self.fate.broken(f"the GPU is unhealthy ({label})", "GpuUnhealthy",
                             "no more jobs; the platform should replace this worker")
            for slot in self.slots:
                if slot.child is not None:
                    slot.stop_child(StopCause.GPU_UNHEALTHY, self.fate.message, now,
                                    interrupt=True)
                self._actions.extend(slot.spares.stop(StopCause.GPU_UNHEALTHY, label, now,
                                                      self.settings.stop_grace))
        self.gpu_events = (*self.gpu_events, (label, action))[-10:]

    def _on_tick(self, ev: E.Tick, now: float) -> None:
        """Time has passed: the step checks the clocks."""

    # --- a child's start, its messages and its exit -----------------------------------------

    def _on_settled(self, ev: E.Settled, now: float) -> None:
        slot = self.slots[ev.slot]
        if slot.starting != ev.cid:
            return
        if self.fate.state is not WorkerState.RUNNING or self.shutdown_at is not None \
                or self.warm_off:
            slot.starting = None           # not now (_ensure_children asks again if needed)
            return
        if not ev.fits:                    # a lost child still holds what a new one needs
            slot.starting = None
            self.fate.slot_out(slot, "a worker process here could not be stopped and its "
                               f"GPU memory is not back ({ev.used_mb:.0f} MiB in use): no "
                               "new one starts in its place", WorkerState.BROKEN)
            return
        slot.next_baseline = ev.used_mb
        self._actions.append(Spawn(slot.index, ev.cid, self.settings, slot.env(),
                                   checks=not slot.ever_ready,
                                   cause=slot.next_cause if slot.spawns else "first"))

    def _on_spawned(self, ev: E.Spawned, now: float) -> None:
        slot = self.slots[ev.slot]
        if slot.spares.starting == ev.cid:
            slot.spares.spawned(ev.cid, ev.pid, now, self.settings, slot.index)
        elif slot.starting != ev.cid:     # a start given up on (recover): not ours to keep
            self._actions.append(Signal(signal.SIGKILL, ev.cid, group=True))
        else:
            slot.spawned(ev.cid, ev.pid, now)

    def _on_spawn_failed(self, ev: E.SpawnFailed, now: float) -> None:
        slot = self.slots[ev.slot]
        if slot.spares.starting == ev.cid:     # transient: it does not fit, or not now
            (slot.spares.not_now if ev.transient else slot.spares.failed)(ev.error, now)
            return
        if slot.starting != ev.cid:
            return
        slot.starting = None
        if ev.transient:                   # not now: again after a backoff
            verdict = slot.start_failed(ev.error, now)
            if verdict is not None:
                self.fate.slot_out(slot, verdict.message, WorkerState.BROKEN)
            return
        self.fate.child_setup_failed(slot, "the worker process could not be started: "
                                     f"{ev.error}", "", ())

    def _on_resumed(self, ev: E.Resumed, now: float) -> None:
        log.warning("the worker itself was stopped for %.1fs: its children's clocks skip it",
                    ev.gap)
        for slot in self.slots:
            slot.resumed(now)

    def _on_message(self, ev: E.Message, now: float) -> None:
        slot = self.slots[ev.slot]
        if slot.holds(ev.cid):
            if slot.message(ev.msg, now):
                self._ready(slot, ev.msg, now)
        elif (other := slot.spares.owns(ev.cid)) is not None:
            self._actions.extend(slot.spares.message(other, ev.msg, now))

    def _on_memory_read(self, ev: E.MemoryRead, now: float) -> None:
        slot = self.slots[ev.slot]
        if slot.holds(ev.cid):
            slot.memory_read(ev.reading)

    def _on_exited(self, ev: E.Exited, now: float) -> None:
        slot = self.slots[ev.slot]
        if not slot.holds(ev.cid):
            if (other := slot.spares.owns(ev.cid)) is not None:    # a spare, or retired
                slot.spares.exited(other, recycling.describe_exit(ev.code), now)
            return                          # or a child the core already let go of
        for msg in ev.messages:             # its last words: results written still count
            if slot.message(msg, now):
                self._ready(slot, msg, now)
        verdict = slot.exited(ev.code, ev.tail, now, self.shutdown_at is not None)
        if verdict is None:
            return
        if verdict.kind == "warm_refused":
            if not self.warm_off:     # every child of that forkserver says the same
                log.warning("warm refresh refused: %s; children start cold (the forkserver "
                            "is restarted without the handler module)", verdict.message)
                self._actions.append(WarmOff(verdict.message))
            self.warm_off = True
        elif verdict.kind == "setup_failed":
            self.fate.child_setup_failed(slot, verdict.message, verdict.details, verdict.tail)
        else:
            self.fate.slot_out(slot, verdict.message, WorkerState.BROKEN)

    def _ready(self, slot: Slot, msg: P.Ready, now: float) -> None:
        """A child passed setup: what that means for the worker."""
        child = slot.child
        for other in self.slots:       # out before any child was ready: worth a new try
            if other.revivable:
                other.out, other.revivable, other.setup_failures = None, False, 0
        self.handler_kind = msg.kind
        self.use_settings(settings_report.on_ready(self.settings, msg.config or {}, msg.notes))
        self.last_ready_s = now - child.started
        if slot.spares.first_setup_s is None:
            slot.spares.first_setup_s = self.last_ready_s
        self._actions.append(ChildReady(slot.index, self.last_ready_s))
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
        return self.shutdown_at is not None and not any(
            s.child is not None or s.starting is not None or s.spares.busy
            for s in self.slots)

    def unfinished(self) -> list:
        """Every job held and not ended (for the loop's very last resort)."""
        return [t for t in self.jobs.active.values() if not t.finished]

    def next_deadline(self) -> float | None:
        heartbeat, shutdown_at = self.settings.heartbeat_timeout, self.shutdown_at
        times = [t for s in self.slots for t in s.deadlines(heartbeat, shutdown_at)
                 if t is not None]
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

    def _step(self, now: float) -> list:
        self.no_child.update(any(s.child is not None and s.child.state in LIVE_STATES
                                 for s in self.slots), now)
        shutdown_at = self.shutdown_at
        for slot in self.slots:
            verdict = slot.check_clocks(now, shutdown_at)
            if verdict is not None:
                self.fate.slot_out(slot, verdict.message, WorkerState.BROKEN)
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
        out = self._actions[:]
        self._actions.clear()
        return out

    def _take(self) -> list:
        out = self._actions[:]
        self._actions.clear()
        return out

    def _ensure_children(self, now: float) -> None:
        if self.fate.state is not WorkerState.RUNNING or self.shutdown_at is not None:
            return
        for slot in self.slots:              # a ready spare fills a vacancy at once
            if slot.child is None and slot.spares.ready and slot.out is None:
                slot.promote(now)
        if self.warm_off:     # the forkserver restarts cold only with no child alive
            if any(s.child is not None or s.starting is not None for s in self.slots):
                return
            self.warm_off = False
        for slot in self.slots:
            if slot.wants_child:
                self.cids += 1
                slot.starting = self.cids
                # A GPU shared with another child moves with that child's work: nothing
                # to wait for (the VRAM limit counts such a child's own reservation only).
                previous, slot.previous_mb = slot.previous_mb, None
                need, slot.lost_need_mb = slot.lost_need_mb, None
                gone, slot.previous_pid = slot.previous_pid, None
                self._actions.append(Settle(slot.index, self.cids, slot.devices,
                                            None if slot.shared else previous, need, gone))
            elif slot.out is None and slot.spares.wanted(slot.child, self.settings,
                                                         slot.devices, now):
                self.cids += 1
                slot.spares.starting = self.cids
                active = slot.child
                beside = {"WORKER_SPARE_BESIDE": str(active.pid)}     # child/beside.py
                self._actions.append(Spawn(slot.index, self.cids, self.settings,
                                           {**slot.env(), **beside},
                                           cause="spare", active_pid=active.pid,
                                           devices=slot.devices, vram_mb=max(
                                               active.peak_vram_mb, (active.torch or {})
                                               .get("reserved_mb", 0.0))))

    def _dispatch(self, now: float) -> None:
        for slot in self.slots:
            slot.refresh_if_idle(now)
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
        slot.take(tracked, msg, data)

