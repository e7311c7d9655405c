"""The core's events about its child: the messages it sends and its exit.

A mixin of SupervisorCore (core.py), split out to keep each file to one subject; it uses
the core's state (jobs, slots, settings) and its endings. Each event names the slot of
the child it is about.
"""
from __future__ import annotations

import logging

from .. import protocol as P
from ..config import SettingsError
from ..jobs import JobResult, JobState, Reason
from . import blame, recycling
from .actions import ChildReady, Chunked, Progressed, ReadMemory, WarmOff
from .lifecycle import ChildRecord, ChildState, ExitCause, StopCause
from .slots import Slot
from .status import WorkerState

log = logging.getLogger("worker")


class ChildEvents:
    def message(self, index: int, msg: P.Message, now: float) -> list:
        slot = self.slots[index]
        child = slot.child
        if child is None:
            return []
        child.last_beat = now
        if isinstance(msg, P.Done):
            self._on_done(slot, child, msg, now)
        elif isinstance(msg, (P.Chunk, P.Progress)):
            tracked = slot.in_flight.get(msg.run)
            if tracked is not None:
                event = Chunked if isinstance(msg, P.Chunk) else Progressed
                self._out.append(event(tracked.listener, tracked.id, msg.value))
        elif isinstance(msg, P.Heartbeat):
            child.rss, child.torch = msg.rss, msg.gpu
        elif isinstance(msg, P.Ready):
            self._on_ready(slot, child, msg, now)
        elif isinstance(msg, P.SetupFailed):
            child.setup_error = (msg.message, msg.traceback)
        elif isinstance(msg, P.WarmRefused):
            child.warm_refused = msg.reason
        elif isinstance(msg, P.Garbled):
            self._on_garbled(slot, child, msg, now)
        return self._step(now)

    def exited(self, index: int, code: int | None, output_tail: list, now: float) -> list:
        slot = self.slots[index]
        child, slot.child = slot.child, None
        slot.log_ids = ()
        if child is not None:
            self._on_exit(slot, child, code, output_tail, now)
        return self._step(now)

    def _on_ready(self, slot: Slot, child: ChildRecord, msg: P.Ready, now: float) -> None:
        if not child.ready(msg):
            return
        slot.ever_ready, slot.setup_failures = True, 0
        for other in self.slots:       # out before any child was ready: worth a new try
            if other.revivable:
                other.out, other.revivable, other.setup_failures = None, False, 0
        self.handler_kind = msg.kind
        if msg.config:
            try:
                self.settings = self.settings.with_config(msg.config)
            except SettingsError as exc:     # the child checked them; this is a safety net
                log.error("start() settings ignored: %s", exc)
        self.last_ready_s = now - child.started
        self._out.append(ChildReady(slot.index, self.last_ready_s))
        log.info("child %d%s ready in %.2fs (handler: %s, %s, concurrency %d%s)",
                 child.pid, slot.label(self.slots), self.last_ready_s, msg.kind.value,
                 msg.mode.value, child.concurrency,
                 f"; preloaded: {', '.join(msg.preloaded)}" if msg.preloaded else "")
        missing = [m for m in self.preload if m not in msg.preloaded]
        if missing and self.check_preload:
            log.warning("preload modules not loaded in the forkserver (import failed?): %s",
                        ", ".join(missing))

    def _on_done(self, slot: Slot, child: ChildRecord, msg: P.Done, now: float) -> None:
        child.concurrency = max(1, msg.concurrency)
        if msg.gpu is not None:       # fresher than the last heartbeat's, for the VRAM check
            child.torch = msg.gpu
        child.cancels.pop(msg.run, None)
        tracked = slot.in_flight.pop(msg.run, None)
        slot.breaker.reset()          # the child finished a job: this is no storm
        if tracked is None:
            return   # already ended by the worker (timeout, cancel): this is the child's ack
        # Untagged output still in the pipe belongs to the job that just ended.
        slot.log_ids = slot.running_ids() or (tracked.id,)
        child.jobs_run += 1
        tracked.suspect = False
        result = tracked.timed(JobResult(tracked.id, msg.state, msg.reason, msg.body,
                                         msg.refresh), now)
        if msg.peak_vram_mb is not None:
            result.extra["peak_vram_mb"] = msg.peak_vram_mb
        self.jobs.report(tracked, result)      # logged with its times by the loop
        verdict = recycling.after_job(result, child, self.settings)
        if verdict is not None:
            child.replace_when_idle(*verdict)
        self._maybe_idle(slot, child)

    def _on_garbled(self, slot: Slot, child: ChildRecord, msg: P.Garbled, now: float) -> None:
        """A frame from the child that the parent cannot read. A result or chunk names its
        run: that job fails (its output cannot be delivered as it is); anything else means
        the channel cannot be trusted, so the child is replaced."""
        tracked = slot.in_flight.get(msg.run) if msg.run is not None else None
        log.error("unreadable %s message from child %d: %s", msg.tag or "unknown", child.pid,
                  msg.error)
        if msg.tag == "done" and msg.run is not None:
            child.cancels.pop(msg.run, None)     # an abandoned run's ack, even unreadable
        if tracked is not None and msg.tag == "done":
            del slot.in_flight[msg.run]
            child.jobs_run += 1
            self.jobs.end(tracked, JobState.FAILED, Reason.HANDLER_ERROR,
                          f"the job's result could not be read by the worker: {msg.error}",
                          now, "ResultUnreadable")
            self._maybe_idle(slot, child)
        elif tracked is not None and msg.tag in ("chunk", "progress"):
            if msg.tag == "chunk":     # a stream with a hole in it is not the stream
                self._abandon(slot, tracked, JobState.FAILED, Reason.HANDLER_ERROR,
                              f"a stream chunk could not be read by the worker: {msg.error}",
                              now, "ChunkUnreadable")
        elif msg.tag not in ("done", "chunk", "progress", "heartbeat") \
                and child.state is not ChildState.STOPPING:
            self._stop_child(slot, StopCause.PROTOCOL, f"unreadable message: {msg.error}",
                             now, interrupt=True)

    def _maybe_idle(self, slot: Slot, child: ChildRecord) -> None:
        """A busy child with no job left is ready; between jobs, check its memory."""
        if slot.in_flight or child.state is not ChildState.BUSY:
            return
        child.state = ChildState.READY
        if child.refresh_reason is None and recycling.watches_memory(self.settings):
            child.checking_memory = True
            self._out.append(ReadMemory(child.pid, slot.index))

    def _on_exit(self, slot: Slot, child: ChildRecord, code: int | None, tail: list,
                 now: float) -> None:
        if child.warm_refused is not None and not child.jobs_run:
            if not self.warm_off:     # every child of that forkserver says the same
                log.warning("warm refresh refused: %s; children start cold (the forkserver "
                            "is restarted without the handler module)", child.warm_refused)
                self._out.append(WarmOff(child.warm_refused))
            self.warm_off = True
            slot.next_cause = "warm_off"
            return
        how = recycling.describe_exit(code)
        cause = child.exit_cause()
        slot.next_cause = child.start_cause(cause)
        if cause.in_setup:
            message = child.setup_failure(cause, how, self.settings.setup_timeout,
                                          self.shutdown_at is not None)
            if message is not None:
                details = child.setup_error[1] if child.setup_error else ""
                self._child_setup_failed(slot, message, details, tail)
            return
        if cause.is_death and child.jobs_run == 0:   # a storm: children die before any job ends
            slot.breaker.record(now, self.settings.restart_window)
        if cause is ExitCause.CRASHED:
            reason_text = f"the worker process {how} during the job"
        else:
            reason_text = f"the worker process was stopped ({child.stop_text}) during the job"
        jobs = list(slot.in_flight.values())
        if cause is ExitCause.CRASHED:
            again, failed = blame.after_crash(jobs, self.settings.job_max_crashes,
                                              self.shutdown_at is not None)
            for tracked in reversed(again):
                log.warning("job %s: %s; running it again, alone, on a fresh child%s",
                            tracked.id, reason_text, "" if len(jobs) > 1 else
                            f" ({tracked.crashes}/{self.settings.job_max_crashes})")
                self.pending.appendleft(tracked)
        else:
            failed = jobs
        for tracked in failed:
            text = reason_text
            if tracked.crashes > 1:
                text = (f"{reason_text}; it has now killed the worker process "
                        f"{tracked.crashes} times")
            log.error("job %s failed: %s", tracked.id, text)
            self.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST, text, now, "WorkerLost")
        slot.in_flight.clear()
        if cause is ExitCause.CRASHED:
            log.error("child %d%s %s", child.pid, slot.label(self.slots), how)
        if cause.is_death and slot.breaker.tripped(self.settings.restart_limit):
            self._slot_out(slot, f"{len(slot.breaker.deaths)} worker processes in a row died "
                                 f"before finishing a job, within "
                                 f"{self.settings.restart_window:g}s; not respawning "
                                 "(WORKER_RESTART_LIMIT)", WorkerState.BROKEN)

