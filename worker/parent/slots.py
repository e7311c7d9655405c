"""One place for a child, and the rules that touch only it.

The core keeps one Slot per child the worker runs (placement.py decides how many and with
which GPUs). A slot owns its child's record, the jobs in that child (`in_flight`, by run),
what the place has been through (restart storms, setup failures, out of service) and the
rules for one child: what its messages mean, what its exit means for its jobs (crash blame,
the breaker), its clocks, how it is stopped. What reaches across slots — the queue,
dispatch, the worker's state, a child that cannot start — is the core's (core.py): a
slot's exit returns a `Verdict` for the core to act on instead of deciding for the worker.
A job is queued (JobBook) or in exactly one slot.
"""
from __future__ import annotations

import logging

from .. import protocol as P
from ..config import Settings
from ..jobs import JobResult, JobState, Reason, execution_timeout
from ..protocol import HandlerMode
from . import blame, recycling, slot_faults
from .actions import Chunked, Progressed, ReadMemory, Send, Signal, Started
from .breaker import RestartBreaker
from .jobbook import JobBook, TrackedJob
from .lifecycle import LOST, ChildRecord, ChildState, ExitCause, StopCause, Verdict
from .spares import SWAP_CAUSES, Spares
from .status import ChildView

log = logging.getLogger("worker")
RESUME_GRACE_S = 1.0          # after the worker was stopped: what its children sent is read



class Slot:
    def __init__(self, index: int, devices: tuple, shared: bool, jobs: JobBook,
                 settings: Settings, many: bool = False):
        self.index = index
        self.devices = devices         # its children's CUDA_VISIBLE_DEVICES; () = the parent's
        self.shared = shared           # another slot uses one of its GPUs
        self.many = many               # the worker has other slots (log lines say which)
        self._jobs = jobs
        self._actions = jobs.out       # the core's actions of the current step
        self.settings = settings       # the effective settings; the core keeps it current
        self.child: ChildRecord | None = None
        self.starting: int | None = None   # the child number being started (Settle/Spawn)
        self.refresh_asked: str | None = None   # a refresh asked while it was starting
        self.next_baseline = 0.0           # the settled reading: the baseline of that child
        self.previous_mb: float | None = None   # the last child's baseline (settle wait)
        self.previous_pid: int | None = None    # ... and its pid (NVML per process)
        self.in_flight: dict = {}          # run -> TrackedJob, in its child now
        self.log_ids: tuple = ()           # jobs the child's untagged output lines belong to
        self.breaker = RestartBreaker()
        self.ever_ready = False            # a child here has passed setup (and its checks)
        self.setup_failures = 0            # in a row, since a child here was last ready
        self.out: str | None = None        # out of service, and why: no child starts here
        self.revivable = False             # out before any slot was ready: tried once more
        self.spawns = 0
        self.next_cause = "first"          # why its next child starts (lifecycle.start_cause)
        self.last_run = 0                  # the run it got last: among idle slots, oldest first
        self.retry_at: float | None = None # a start failed for a moment: no new one before
        self.start_failures = 0            # such failures in a row
        self.start_error: str | None = None   # the last one, while retrying
        self.lost = 0                      # children here declared lost (no exit after SIGKILL)
        self.lost_need_mb: float | None = None  # the last lost one's GPU memory: fit check
        self.spares = Spares()             # its spare child and the children it replaced
        self.code_files: set = set()       # reload mode: what its children's code is
        self.code: tuple = ()              # ... as published: (files, packages)

    # --- what it is ------------------------------------------------------------------------

    def env(self) -> dict:
        """What its child's environment gets: its GPUs and its index."""
        env = {"WORKER_CHILD_INDEX": str(self.index)}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return env

    def holds(self, cid: int) -> bool:
        """Child `cid` is the one in this slot now."""
        return self.child is not None and self.child.cid == cid

    @property
    def wants_child(self) -> bool:
        return self.child is None and self.starting is None and self.out is None \
            and self.retry_at is None and not self.spares.coming

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

    def view(self, running: bool) -> ChildView:
        """As published in the Status (`running`: the worker takes jobs)."""
        c = self.child
        return ChildView(self.index, self.devices, c.pid if c else None,
                         c.state if c else None, c.mode if c else None,
                         c.concurrency if c else 1,
                         c.concurrency if running and c is not None and c.accepting else 0,
                         tuple(c.preloaded) if c else (), c.jobs_run if c else 0,
                         c.rss if c else 0, c.torch if c else None,
                         c.baseline_mb if c else 0.0, self.running_ids(), self.log_ids,
                         self.out, self.spawns, len(self.breaker.deaths), self.lost,
                         self.start_error, self.spares.view(), self.code)

    def label(self) -> str:
        """' (slot 2, GPU-…)' for log lines, when the worker has several children."""
        if not self.many:
            return ""
        return f" (slot {self.index}" + (f", {','.join(self.devices)})" if self.devices
                                         else ")")

    # --- its child -------------------------------------------------------------------------

    def spawned(self, cid: int, pid: int, now: float) -> None:
        s = self.settings
        self.starting = None
        self.spawns += 1
        self.start_failures, self.start_error = 0, None
        self.child = ChildRecord(pid, now, now + s.setup_timeout if s.setup_timeout > 0
                                 else None, last_beat=now, baseline_mb=self.next_baseline,
                                 slot=self.index, cid=cid)
        if self.refresh_asked is not None:
            self.child.replace_when_idle(self.refresh_asked, "refresh")
            self.refresh_asked = None

    def refresh(self, reason: str) -> None:
        """Replace its child once idle; a child being started counts (a refresh never
        falls between a child's start and its record)."""
        if self.child is not None:
            self.child.replace_when_idle(reason, "refresh")
        elif self.starting is not None and self.refresh_asked is None:
            self.refresh_asked = reason

    def take(self, tracked: TrackedJob, msg: P.Run, data) -> None:
        """Run a job in its child (the core chose it, gave it a run and encoded it)."""
        child = self.child
        self._actions.append(Send(msg, data, child.cid))
        self.in_flight[tracked.run] = tracked
        self.last_run = tracked.run
        self.log_ids = self.running_ids()
        child.state = ChildState.BUSY
        self._actions.append(Started(tracked.listener, tracked.id))

    def message(self, msg: P.Message, now: float) -> bool:
        """A message from its child; True when the child has just become ready (the core
        does what that means for the worker)."""
        child = self.child
        child.last_beat = now
        kind = type(msg)
        if kind is P.Done:
            self._done(child, msg, now)
        elif kind is P.Chunk or kind is P.Progress:
            tracked = self.in_flight.get(msg.run)
            if tracked is not None:
                event = Chunked if kind is P.Chunk else Progressed
                self._actions.append(event(tracked.listener, tracked.id, msg.value))
        elif kind is P.Heartbeat:
            child.rss, child.torch = msg.rss, msg.gpu
        elif kind is P.Ready:
            self._learn_code(msg.code)
            if child.ready(msg):
                self.ever_ready, self.setup_failures = True, 0
                return True
        elif kind is P.SetupFailed:
            self._learn_code(msg.code)
            child.setup_error = (msg.message, msg.traceback)
        elif kind is P.WarmRefused:
            child.warm_refused = msg.reason
        elif kind is P.Garbled:
            self._garbled(child, msg, now)
        return False

    def _learn_code(self, code) -> None:
        """Reload mode: the files its children ran (kept, so a file that broke an import
        stays watched) and the third-party packages they import."""
        if isinstance(code, dict) and len(self.code_files) < 5000:
            self.code_files.update(f for f in code.get("files") or () if isinstance(f, str))
            self.code = (tuple(sorted(self.code_files)),
                         tuple(p for p in code.get("packages") or () if isinstance(p, str)))

    def memory_read(self, reading) -> None:
        """The reading its idle child's recycling check asked for (None: the probe failed)."""
        child = self.child
        if child.checking_memory:
            child.checking_memory = False
            if reading is not None and child.refresh_reason is None:
                child.replace_when_idle(recycling.memory_verdict(
                    reading, child, self.settings,
                    own_only=self.shared or self.spares.busy or not child.baseline_known),
                    "memory")

    def exited(self, code: int | None, tail: list, now: float,
               shutting_down: bool) -> Verdict | None:
        """Its child is gone: its jobs fail or, after a crash, run again (blame.py)."""
        child, self.child = self.child, None
        self.previous_mb = child.baseline_mb if child.baseline_known else None
        self.previous_pid = child.pid
        jobs = self.let_go()
        s = self.settings
        how = recycling.describe_exit(code)
        if child.warm_refused is not None and not child.jobs_run:
            self.next_cause = "warm_off"
            self._lose(jobs, f"the worker process {how}", now)     # none: it never was ready
            return Verdict("warm_refused", child.warm_refused)
        cause = child.exit_cause()
        self.next_cause = child.start_cause(cause)
        if cause.in_setup:
            self._lose(jobs, f"the worker process {how}", now)     # none: it never was ready
            message = child.setup_failure(cause, how, s.setup_timeout, shutting_down)
            if message is None:
                return None
            details = child.setup_error[1] if child.setup_error else ""
            return Verdict("setup_failed", message, details, tuple(tail))
        if cause.is_death and child.jobs_run == 0:   # a storm: children die before any job ends
            self.breaker.record(now, s.restart_window)
        if cause is ExitCause.CRASHED:
            reason_text = f"the worker process {how} during the job"
        else:
            reason_text = f"the worker process was stopped ({child.stop_text}) during the job"
        if cause is ExitCause.CRASHED:
            again, failed = blame.after_crash(jobs, s.job_max_crashes, shutting_down)
            for tracked in reversed(again):
                log.warning("job %s: %s; running it again, alone, on a fresh child%s",
                            tracked.id, reason_text, "" if len(jobs) > 1 else
                            f" ({tracked.crashes}/{s.job_max_crashes})")
                self._jobs.pending.appendleft(tracked)
        else:
            failed = jobs
        self._lose(failed, reason_text, now)
        if cause is ExitCause.CRASHED:
            log.error("child %d%s %s", child.pid, self.label(), how)
            if not self.spares.ready and self.spares.enabled(s, self.devices):
                self.spares.unspared += 1
        if cause.is_death and self.breaker.tripped(s.restart_limit):
            return Verdict("tripped", f"{len(self.breaker.deaths)} worker processes in a row "
                                      f"died before finishing a job, within "
                                      f"{s.restart_window:g}s; not respawning "
                                      "(WORKER_RESTART_LIMIT)")
        return None

    def resumed(self, now: float) -> None:
        """The worker itself was stopped: its children's clocks restart now (a heartbeat
        window), and a job or set-up whose time ran out meanwhile has a second more, for
        what its child sent then (still unread) to be read first."""
        for child in (self.child, self.spares.child, *self.spares.retiring):
            if child is not None:
                child.resumed(now)
        for tracked in self.in_flight.values():
            if tracked.deadline is not None and tracked.deadline < now + RESUME_GRACE_S:
                if tracked.deadline == tracked.expires:      # still named the ttl's end
                    tracked.expires = now + RESUME_GRACE_S
                tracked.deadline = now + RESUME_GRACE_S

    def promote(self, now: float) -> None:
        """The spare takes the active child's place; the old one (if any) retires."""
        old, spare = self.child, self.spares.promote()
        if old is not None:
            self.spares.retire(old)
        self.child = spare
        self.spawns += 1
        self.next_cause = "spare"
        log.info("child %d%s takes over from %s (its spare, set up %.2fs before)",
                 spare.pid, self.label(), f"child {old.pid}" if old else "the child that "
                 "ended", now - spare.started)

    def start_failed(self, error: str, now: float) -> Verdict | None:
        """A start failed for a moment: again after a backoff (slot_faults.py)."""
        return slot_faults.start_failed(self, error, now)

    # --- its clocks and its stops ----------------------------------------------------------

    def check_clocks(self, now: float, shutdown_at: float | None) -> Verdict | None:
        """Jobs past their timeout, the child's clocks, a start's backoff. A Verdict when
        its child was declared lost and that trips the breaker."""
        s = self.settings
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        for tracked in list(self.in_flight.values()):
            if tracked.deadline is not None and now >= tracked.deadline:
                ran = tracked.deadline - tracked.started
                text = f"the job ran longer than its execution timeout of " \
                    f"{execution_timeout(tracked.job, s.job_timeout):g}s" \
                    if tracked.deadline != tracked.expires else \
                    f"the job's policy.ttl ran out after {ran:g}s of running"
                self.abandon(tracked, JobState.TIMED_OUT, Reason.TIMED_OUT, text, now)
        keep = shutdown_at is None and self.out is None
        self._actions.extend(self.spares.check_clocks(now, s, keep))
        child = self.child
        if child is None:
            return None
        due = child.due(now, s.stop_grace, s.heartbeat_timeout, shutdown_at,
                        busy=bool(self.in_flight))
        if due is LOST:
            return slot_faults.lost(self, now)
        if isinstance(due, Signal):
            log.warning("child %d did not stop within %.1fs; sending %s to its process group",
                        child.pid, s.stop_grace, due.sig.name)
            self._actions.append(due)
        elif due is not None:
            cause, text, interrupt = due
            self.stop_child(cause, text, now, interrupt)
        return None

    def deadlines(self, heartbeat_timeout: float, shutdown_at: float | None) -> list:
        times = [t.deadline for t in self.in_flight.values() if t.deadline is not None]
        if self.retry_at is not None:
            times.append(self.retry_at)
        if self.spares.busy or self.spares.retry_at is not None:
            times.extend(self.spares.deadlines(self.settings))
        child = self.child
        if child is not None:
            times.append(child.deadline(heartbeat_timeout))
            if shutdown_at is not None and child.state is not ChildState.STOPPING:
                times.append(shutdown_at)     # once stopping, its own steps are its clock
        return times

    def refresh_if_idle(self, now: float) -> None:
        child = self.child
        if child is not None and child.live and child.refresh_reason \
                and not self.in_flight and not child.checking_memory:
            log.info("refreshing the worker process%s: %s", self.label(),
                     child.refresh_reason)
            self.stop_child(StopCause.REFRESH, f"refresh: {child.refresh_reason}", now)

    def stop_child(self, cause: StopCause, text: str, now: float,
                   interrupt: bool = False) -> None:
        child = self.child
        actions = child.begin_stop(cause, text, now, self.settings.stop_grace, interrupt)
        if actions:
            log.info("stopping child %d: %s", child.pid, text)
            self._actions.extend(actions)
        if cause in SWAP_CAUSES and not self.in_flight:
            if child.restart_as == "refresh_cold":     # the job wants what it wrote loaded
                self._actions.extend(self.spares.stop(
                    StopCause.REFRESH, "a cold refresh was asked", now, self.settings.stop_grace))
            elif self.spares.ready:
                self.promote(now)
            elif self.spares.enabled(self.settings, self.devices):
                self.spares.unspared += 1

    def abandon(self, tracked: TrackedJob, state: JobState, reason: Reason, text: str,
                now: float, error_type: str | None = None) -> None:
        """End a running job now (timeout or cancel) and make sure its work stops."""
        child = self.child
        del self.in_flight[tracked.run]
        self.log_ids = self.running_ids()
        if error_type is None:
            error_type = "TimedOut" if state is JobState.TIMED_OUT else "Cancelled"
        self._jobs.end(tracked, state, reason, text, now, error_type)
        if child is None or child.state is ChildState.STOPPING:
            return
        if child.mode is HandlerMode.INLINE:
            child.restart_as = "timeout" if state is JobState.TIMED_OUT else "cancel"
            self.stop_child(StopCause.JOB_ENDED, f"job {tracked.id} {reason.value}", now,
                            interrupt=True)
            return
        cancel = P.Cancel(tracked.run)
        self._actions.append(Send(cancel, cancel.encode(), child.cid))
        child.cancels[tracked.run] = (tracked.id, now + self.settings.stop_grace)
        if not self.in_flight and child.state is ChildState.BUSY:
            child.state = ChildState.READY

    def let_go(self) -> list:
        """Its jobs, which it no longer holds (the core fails them)."""
        jobs = list(self.in_flight.values())
        self.in_flight.clear()
        self.log_ids = ()
        return jobs

    def _lose(self, jobs: list, reason_text: str, now: float) -> None:
        for tracked in jobs:
            text = reason_text
            if tracked.crashes > 1:
                text = (f"{reason_text}; it has now killed the worker process "
                        f"{tracked.crashes} times")
            log.error("job %s failed: %s", tracked.id, text)
            self._jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST, text, now, "WorkerLost")

    # --- messages ----------------------------------------------------------------------

    def _done(self, child: ChildRecord, msg: P.Done, now: float) -> None:
        child.concurrency = max(1, msg.concurrency)
        if msg.gpu is not None:       # fresher than the last heartbeat's, for the VRAM check
            child.torch = msg.gpu
        child.cancels.pop(msg.run, None)
        tracked = self.in_flight.pop(msg.run, None)
        self.breaker.reset()          # the child finished a job: this is no storm
        if tracked is None:
            return   # already ended by the worker (timeout, cancel): this is the child's ack
        # Untagged output still in the pipe belongs to the job that just ended.
        self.log_ids = self.running_ids() or (tracked.id,)
        child.jobs_run += 1
        tracked.suspect = False
        result = tracked.timed(JobResult(tracked.id, msg.state, msg.reason, msg.body,
                                         msg.refresh), now)
        if msg.peak_vram_mb is not None:
            result.extra["peak_vram_mb"] = msg.peak_vram_mb
            child.peak_vram_mb = max(child.peak_vram_mb, msg.peak_vram_mb)
        self._jobs.report(tracked, result)      # logged with its times by the loop
        verdict = recycling.after_job(result, child, self.settings)
        if verdict is not None:
            child.replace_when_idle(*verdict)
        self._maybe_idle(child)

    def _garbled(self, child: ChildRecord, msg: P.Garbled, now: float) -> None:
        """A frame from the child that the parent cannot read. A result or chunk names its
        run: that job fails (its output cannot be delivered as it is); anything else means
        the channel cannot be trusted, so the child is replaced."""
        tracked = self.in_flight.get(msg.run) if msg.run is not None else None
        log.error("unreadable %s message from child %d: %s", msg.tag or "unknown", child.pid,
                  msg.error)
        if msg.tag == "done" and msg.run is not None:
            child.cancels.pop(msg.run, None)     # an abandoned run's ack, even unreadable
        if tracked is not None and msg.tag == "done":
            del self.in_flight[msg.run]
            child.jobs_run += 1
            self._jobs.end(tracked, JobState.FAILED, Reason.HANDLER_ERROR,
                           f"the job's result could not be read by the worker: {msg.error}",
                           now, "ResultUnreadable")
            self._maybe_idle(child)
        elif tracked is not None and msg.tag in ("chunk", "progress"):
            if msg.tag == "chunk":     # a stream with a hole in it is not the stream
                self.abandon(tracked, JobState.FAILED, Reason.HANDLER_ERROR,
                             f"a stream chunk could not be read by the worker: {msg.error}",
                             now, "ChunkUnreadable")
        elif msg.tag not in ("done", "chunk", "progress", "heartbeat") \
                and child.state is not ChildState.STOPPING:
            self.stop_child(StopCause.PROTOCOL, f"unreadable message: {msg.error}", now,
                            interrupt=True)

    def _maybe_idle(self, child: ChildRecord) -> None:
        """A busy child with no job left is ready; between jobs, check its memory."""
        if self.in_flight or child.state is not ChildState.BUSY:
            return
        child.state = ChildState.READY
        if child.refresh_reason is None and recycling.watches_memory(self.settings):
            child.checking_memory = True
            self._actions.append(ReadMemory(self.index, child.cid, child.pid, self.devices))
