"""One child process as the parent sees it: one object, one state machine (no I/O, no clock).

    SETTLING ─settled─► SPAWNING ─spawned─► SETTING_UP ─ready─► READY ⇄ BUSY
        (an active child waits for its GPUs' memory; a spare starts SPAWNING)
    any phase with a process ─begin_stop─► STOPPING ─(Stop, SIGTERM, SIGKILL)─► LOST
    any phase with a process ─exit seen─► EXITED (judge says what the exit means)

Its role says what it is to its slot: the ACTIVE child runs the jobs, a SPARE is set up
and held idle to take over, a RETIRING child was replaced and is on its way out.

A stop escalates, stop_grace apart: a Stop message (plus SIGUSR1 when a handler runs in
the child's main thread or setup is under way) → SIGTERM to the process group → SIGKILL.
A child not seen to exit KILL_WAIT_S (at least) after SIGKILL is LOST: stuck in the
kernel (a driver, a frozen cgroup) or its exit not learned; its slot lets go of it.

Only this module writes a child's fields: every transition is a method, and the ones that
ask the loop for something return those actions. Its jobs are here too, by run token.
"""
from __future__ import annotations

import enum
import logging
import signal
from dataclasses import dataclass, field

from .. import protocol as P
from ..protocol import HandlerMode, Kind
from .actions import ReadMemory, Send, Signal, Started
from .causes import START_AFTER_STOP, ExitCause, StartCause, StopCause, StopOrder
from .jobbook import TrackedJob
from .recycling import describe_exit
from .status import ChildState

log = logging.getLogger("worker")
KILL_WAIT_S = 5.0          # after SIGKILL, at least: past it the child is declared lost


class Phase(enum.Enum):
    SETTLING = "settling"        # its GPUs' memory is not back from the child before it
    SPAWNING = "spawning"        # the launcher is starting its process
    SETTING_UP = "setting up"    # its process imports the module and runs its setup
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    EXITED = "exited"
    LOST = "lost"                # did not exit after SIGKILL: let go of

    @property
    def live(self) -> bool:
        """May take jobs, or runs them."""
        return self is Phase.READY or self is Phase.BUSY

    @property
    def unborn(self) -> bool:
        """No process yet."""
        return self is Phase.SETTLING or self is Phase.SPAWNING

    @property
    def over(self) -> bool:
        return self is Phase.EXITED or self is Phase.LOST

    @property
    def shown(self) -> ChildState:
        """As the status publishes it."""
        return _SHOWN.get(self, ChildState.STOPPING)


_SHOWN = {Phase.SETTLING: ChildState.STARTING, Phase.SPAWNING: ChildState.STARTING,
          Phase.SETTING_UP: ChildState.STARTING, Phase.READY: ChildState.READY,
          Phase.BUSY: ChildState.BUSY}      # stopping, exited, lost: "stopping" until let go


for _phase in Phase:      # (live, unborn, shown), read on every step: kept on the member
    _phase.flags = (_phase.live, _phase.unborn, _phase.shown)


class Role(enum.Enum):
    ACTIVE = "active"
    SPARE = "spare"
    RETIRING = "retiring"


@dataclass(frozen=True)
class Exit:
    """A child's exit, judged once (Child.judge)."""
    cause: ExitCause
    next_start: StartCause           # why the next child in its place starts
    how: str                         # "killed by SIGKILL (out of memory?)", ...
    warm_refused: str | None = None  # the forkserver refused its warm import: start cold
    setup_failure: str | None = None # why the handler could not start (None: we stopped it)
    details: str = ""                # the setup failure's traceback


# How a child's life ended, by (it was ready once, why the parent stopped it: None if it
# was not stopped), for every pair; a set-up failure the child reported, or a warm import
# it refused before running a job, is judged first.
_EXITS = {
    (False, None): ExitCause.SETUP_DIED,
    (True, None): ExitCause.CRASHED,
    **{(False, stop): ExitCause.SETUP_TIMEOUT if stop is StopCause.SETUP_TIMEOUT
       else ExitCause.STOPPED_IN_SETUP for stop in StopCause},
    **{(True, stop): ExitCause.HUNG if stop is StopCause.HUNG
       else ExitCause.SETUP_TIMEOUT if stop is StopCause.SETUP_TIMEOUT
       else ExitCause.STOPPED for stop in StopCause},
}


@dataclass(eq=False)
class Child:
    cid: int                           # its number, given by the core (actions name it)
    slot: int                          # which of the worker's slots it is in
    role: Role = Role.ACTIVE
    phase: Phase = Phase.SETTLING
    pid: int = 0
    started: float = 0.0
    setup_deadline: float | None = None
    last_beat: float = 0.0
    baseline_mb: float = 0.0           # device memory in use before it started
    baseline_known: bool = True        # False for a promoted spare: it started beside one
    peak_vram_mb: float = 0.0          # torch's peak allocation in any of its jobs
    kind: Kind | None = None
    mode: HandlerMode | None = None
    concurrency: int = 1
    preloaded: tuple = ()
    rss: int = 0
    torch: dict | None = None          # its allocator's figures (heartbeat)
    jobs_run: int = 0
    jobs: dict = field(default_factory=dict)      # run -> TrackedJob, in it now
    log_ids: tuple = ()                # jobs its untagged output lines belong to
    cancels: dict = field(default_factory=dict)   # run -> (job id, deadline for its ack)
    refresh_reason: str | None = None  # replace it once idle, and why
    restart_as: StartCause | None = None   # why its successor starts, when the stop says less
    checking_memory: bool = False      # a memory reading is on its way: hold dispatch
    setup_error: tuple | None = None   # (message, traceback) from SetupFailed
    warm_refused: str | None = None    # WarmRefused: it exits, and the next starts cold
    stop_cause: StopCause | None = None
    stop_text: str = ""
    stop_step: int = 0
    stop_next: float | None = None
    ready_at: float | None = None
    gpu_check_after: str | None = None     # a spare: an application Xid since it started, so
    gpu_checking: bool = False         # ... it passes the GPU check (sent) before promotion
    condemned: str | None = None       # a spare stopped as a failure, and why
    live: bool = False                 # its phase is READY or BUSY (kept by _enter)
    unborn: bool = True                # its phase is SETTLING or SPAWNING: no process yet
    state: ChildState = ChildState.STARTING   # its phase as the status publishes it

    def __post_init__(self) -> None:
        self._enter(self.phase)

    def _enter(self, phase: Phase) -> None:
        """Every phase change: the phase, and what is read of it on every step."""
        self.phase = phase
        self.live, self.unborn, self.state = phase.flags

    # --- what it is ------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Ready for another job now."""
        return self.live and self.refresh_reason is None and not self.checking_memory

    @property
    def room(self) -> int:
        return max(0, self.concurrency - len(self.jobs)) if self.accepting else 0

    @property
    def abandoned_ids(self) -> set:
        """Ids of runs ended by the parent that the child has not let go of yet: a new job
        with one of these ids waits for the old run to be gone."""
        return {job_id for job_id, _ in self.cancels.values()}

    @property
    def stopping(self) -> bool:
        return self.phase is Phase.STOPPING

    @property
    def promotable(self) -> bool:
        """A spare that may take over now."""
        return self.phase is Phase.READY and self.gpu_check_after is None

    def running_ids(self) -> tuple:
        return tuple(t.id for t in self.jobs.values())

    def find(self, job_id: str) -> TrackedJob | None:
        for tracked in self.jobs.values():
            if tracked.id == job_id:
                return tracked
        return None

    def failure_text(self) -> str | None:
        """What its set-up said went wrong (a spare's failure), if anything."""
        if self.setup_error is not None:
            return self.setup_error[0]
        if self.warm_refused is not None:
            return f"warm import refused: {self.warm_refused}"
        return None

    # --- its start -------------------------------------------------------------------------

    def settled(self, used_mb: float) -> None:
        """Its GPUs have the memory back: what is in use now is its baseline."""
        self._enter(Phase.SPAWNING)
        self.baseline_mb = used_mb

    def spawned(self, pid: int, now: float, setup_timeout: float) -> None:
        self._enter(Phase.SETTING_UP)
        self.pid, self.started, self.last_beat = pid, now, now
        self.setup_deadline = now + setup_timeout if setup_timeout > 0 else None

    def heard(self, now: float) -> None:
        """Any message: it is alive."""
        self.last_beat = now

    def heartbeat(self, msg: P.Heartbeat) -> None:
        self.rss, self.torch = msg.rss, msg.gpu

    def became_ready(self, msg: P.Ready, now: float) -> bool:
        if self.phase is not Phase.SETTING_UP:
            return False
        self._enter(Phase.READY)
        self.ready_at = now
        self.kind, self.mode, self.concurrency = msg.kind, msg.mode, max(1, msg.concurrency)
        self.preloaded = tuple(msg.preloaded)
        return True

    def setup_failed(self, msg: P.SetupFailed) -> None:
        self.setup_error = (msg.message, msg.traceback)

    def refused_warm(self, reason: str) -> None:
        self.warm_refused = reason

    # --- its role ----------------------------------------------------------------------------

    def promote(self) -> None:
        """A spare takes the active child's place; it started beside another child, so the
        memory in use then is no baseline."""
        self.role, self.baseline_known = Role.ACTIVE, False

    def retire(self) -> None:
        self.role = Role.RETIRING

    def owe_gpu_check(self, label: str) -> list:
        """An application Xid while it is a spare: the GPU check before it takes over."""
        if self.stopping:
            return []
        self.gpu_check_after = label
        return self.check_gpu()

    def check_gpu(self) -> list:
        """Ask a ready spare under suspicion for the GPU check (once)."""
        if self.gpu_check_after is None or self.gpu_checking or self.phase is not Phase.READY:
            return []
        self.gpu_checking = True
        log.info("spare child %d: running the GPU check (after %s) before it may take over",
                 self.pid, self.gpu_check_after)
        msg = P.Check(self.gpu_check_after)
        return [Send(msg, msg.encode(), self.cid)]

    def checked(self, msg: P.Checked) -> bool:
        """The GPU check's answer: True when it passed."""
        self.gpu_checking = False
        if msg.ok:
            log.info("spare child %d passed the GPU check after %s: %s", self.pid,
                     self.gpu_check_after, msg.message)
            self.gpu_check_after = None
            return True
        self.condemned = f"the GPU check after {self.gpu_check_after} failed: {msg.message}"
        return False

    def condemn(self, why: str) -> None:
        self.condemned = why

    # --- its jobs ----------------------------------------------------------------------------

    def run(self, tracked: TrackedJob, msg: P.Run, data) -> list:
        """A job goes in (the core chose it, gave it a run and encoded it)."""
        self.jobs[tracked.run] = tracked
        self.log_ids = self.running_ids()
        self._enter(Phase.BUSY)
        return [Send(msg, data, self.cid), Started(tracked.listener, tracked.id)]

    def done(self, msg: P.Done) -> TrackedJob | None:
        """A run ended in the child: its job, or None when the worker had already ended it
        (a timeout, a cancel: this is the child's ack)."""
        self.concurrency = max(1, msg.concurrency)
        if msg.gpu is not None:       # fresher than the last heartbeat's, for the VRAM check
            self.torch = msg.gpu
        self.cancels.pop(msg.run, None)
        tracked = self.jobs.pop(msg.run, None)
        if tracked is None:
            return None
        # Untagged output still in the pipe belongs to the job that just ended.
        self.log_ids = self.running_ids() or (tracked.id,)
        self.jobs_run += 1
        if msg.peak_vram_mb is not None:
            self.peak_vram_mb = max(self.peak_vram_mb, msg.peak_vram_mb)
        return tracked

    def unreadable_done(self, run: int | None) -> TrackedJob | None:
        """A result frame it sent could not be read: the run ends (its job fails)."""
        if run is None:
            return None
        self.cancels.pop(run, None)            # an abandoned run's ack, even unreadable
        tracked = self.jobs.pop(run, None)
        if tracked is not None:
            self.jobs_run += 1
            self.log_ids = self.running_ids()
        return tracked

    def idle_check(self, watch_memory: bool, devices: tuple) -> list:
        """A busy child with no job left is ready; between jobs, its memory is read."""
        if self.jobs or self.phase is not Phase.BUSY:
            return []
        self._enter(Phase.READY)
        if self.refresh_reason is None and watch_memory:
            self.checking_memory = True
            return [ReadMemory(self.slot, self.cid, self.pid, devices)]
        return []

    def memory_read(self) -> bool:
        """The reading it waited for came: True if it was waiting (the reading counts)."""
        waiting, self.checking_memory = self.checking_memory, False
        return waiting

    def abandon(self, run: int, now: float, grace: float) -> list:
        """The worker ended a run (timeout, cancel): the child is told to stop it, and a
        job stopped this way must be acknowledged within `grace`. An inline handler cannot
        be cancelled: the caller stops the child instead (abandon_inline)."""
        tracked = self.jobs.pop(run)
        self.log_ids = self.running_ids()
        cancel = P.Cancel(run)
        self.cancels[run] = (tracked.id, now + grace)
        if not self.jobs and self.phase is Phase.BUSY:
            self._enter(Phase.READY)
        return [Send(cancel, cancel.encode(), self.cid)]

    def drop_run(self, run: int, restart_as: StartCause | None = None) -> None:
        """A run ended by the worker while the child is (or will be) stopped."""
        self.jobs.pop(run, None)
        self.log_ids = self.running_ids()
        if restart_as is not None:
            self.restart_as = restart_as

    def let_go(self) -> list:
        """Its jobs, which it no longer holds (the caller ends them)."""
        jobs = list(self.jobs.values())
        self.jobs.clear()
        self.log_ids = ()
        return jobs

    # --- replacing and stopping it -------------------------------------------------------

    def replace_when_idle(self, reason: str | None, cause: StartCause) -> None:
        """Recycle it once idle (the first reason given wins); `cause` labels the next
        child's start."""
        if reason is not None and self.refresh_reason is None:
            self.refresh_reason, self.restart_as = reason, cause

    @property
    def replace_now(self) -> bool:
        """Marked for a refresh and idle: it may be stopped now."""
        return self.live and self.refresh_reason is not None and not self.jobs \
            and not self.checking_memory

    def begin_stop(self, cause: StopCause, text: str, now: float, grace: float,
                   interrupt: bool = False) -> list:
        """Cooperative first: a Stop message, and SIGUSR1 to interrupt a handler running in
        the child's main thread (or its setup). A second stop changes nothing."""
        if self.stop_cause is not None or self.unborn or self.phase.over:
            return []
        actions: list = []
        if interrupt or self.phase is Phase.SETTING_UP:
            actions.append(Signal(signal.SIGUSR1, self.cid))
        self.stop_cause, self.stop_text = cause, text
        self._enter(Phase.STOPPING)
        self.stop_step, self.stop_next = 0, now + grace
        stop = P.Stop(text)
        actions.append(Send(stop, stop.encode(), self.cid))
        return actions

    def escalate(self, now: float, grace: float) -> list:
        """The next step of a stop that is taking too long, when due: SIGTERM, then
        SIGKILL, then LOST (the phase says)."""
        if self.stop_next is None or now < self.stop_next:
            return []
        self.stop_step += 1
        if self.stop_step >= 3:
            self.stop_next = None
            self._enter(Phase.LOST)
            return []
        sig = signal.SIGTERM if self.stop_step == 1 else signal.SIGKILL
        self.stop_next = now + (grace if self.stop_step == 1 else max(grace, KILL_WAIT_S))
        log.warning("child %d did not stop within %.1fs; sending %s to its process group",
                    self.pid, grace, sig.name)
        return [Signal(sig, self.cid, group=True)]

    def due_stop(self, now: float, heartbeat_timeout: float, shutdown_at: float | None,
                 setup_timeout: float) -> StopOrder | None:
        """The stop its clocks call for at `now`, if any (not once stopping)."""
        if self.phase is Phase.SETTING_UP:
            if self.setup_deadline is not None and now >= self.setup_deadline:
                return StopOrder(StopCause.SETUP_TIMEOUT, "setup timeout")
            if shutdown_at is not None:
                return StopOrder(StopCause.SHUTDOWN, "shutdown")
            return None
        if not self.live:
            return None
        if heartbeat_timeout > 0 and now - self.last_beat > heartbeat_timeout:
            return StopOrder(StopCause.HUNG,
                             f"no heartbeat for {now - self.last_beat:.0f}s (hung?)", True)
        for job_id, deadline in self.cancels.values():
            if now >= deadline:
                return StopOrder(StopCause.CANCEL_IGNORED,
                                 f"job {job_id} did not stop when cancelled", True)
        busy = bool(self.jobs)
        if shutdown_at is not None and (not busy or now >= shutdown_at):
            return StopOrder(StopCause.SHUTDOWN, "shutdown", busy)
        return None

    def resumed(self, now: float) -> None:
        """Its parent was stopped: a fresh heartbeat window; set-up has a second more."""
        self.last_beat = max(self.last_beat, now)
        if self.setup_deadline is not None:
            self.setup_deadline = max(self.setup_deadline, now + 1.0)

    def deadline(self, heartbeat_timeout: float) -> float | None:
        """Its nearest clock."""
        if self.phase is Phase.STOPPING:
            return self.stop_next
        if self.phase is Phase.SETTING_UP:
            return self.setup_deadline
        if not self.live:
            return None
        times = [deadline for _, deadline in self.cancels.values()]
        if heartbeat_timeout > 0:
            times.append(self.last_beat + heartbeat_timeout)
        return min(times) if times else None

    # --- its end -----------------------------------------------------------------------------

    def judge(self, code: int | None, setup_timeout: float, shutting_down: bool) -> Exit:
        """Its process is gone: the one judgement of what that means."""
        self._enter(Phase.EXITED)
        how = describe_exit(code)
        if self.warm_refused is not None and not self.jobs_run:
            return Exit(ExitCause.WARM_REFUSED, StartCause.WARM_OFF, how, self.warm_refused)
        cause = ExitCause.SETUP_FAILED if self.setup_error is not None \
            else _EXITS[(self.kind is not None, self.stop_cause)]
        if cause is ExitCause.CRASHED:
            start = StartCause.CRASH
        elif cause.in_setup and cause is not ExitCause.STOPPED_IN_SETUP:
            start = StartCause.SETUP_FAILED
        else:
            start = self.restart_as or START_AFTER_STOP.get(self.stop_cause, StartCause.OTHER)
        failure = None
        if cause is ExitCause.SETUP_TIMEOUT:
            failure = f"setup did not finish within {setup_timeout:g}s (WORKER_SETUP_TIMEOUT)"
        elif cause is ExitCause.SETUP_FAILED:
            failure = self.setup_error[0]
        elif cause is ExitCause.SETUP_DIED and not shutting_down:
            failure = f"the worker process {how} during setup"
        details = self.setup_error[1] if self.setup_error else ""
        return Exit(cause, start, how, None, failure, details)

    def lose(self) -> None:
        """Its slot lets go of it without an exit (LOST, or the guard gave up on it)."""
        if not self.phase.over:
            self._enter(Phase.LOST)

    def forget(self, action) -> None:
        """An action it waited on was never carried out (the guard dropped it)."""
        if type(action) is ReadMemory:
            self.checking_memory = False
