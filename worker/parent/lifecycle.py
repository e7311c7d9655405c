"""One child's lifecycle as the parent sees it: a pure state machine (no I/O, no clock).

    STARTING ──Ready──► READY ⇄ BUSY ──begin_stop──► STOPPING ──exit──► (gone)
        └─────────────────────begin_stop───────────────┘

A stop escalates, stop_grace apart: a Stop message (plus SIGUSR1 when a handler runs in
the child's main thread or setup is under way) → SIGTERM to the process group → SIGKILL.
A child not seen to exit KILL_WAIT_S (at least) after SIGKILL is LOST: stuck in the
kernel (a driver, a frozen cgroup) or its exit not learned; its slot lets go of it.
Why a child stopped (StopCause) and how it ended (ExitCause) are enums, so the core never
compares reason strings.
"""
from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import protocol as P
from ..protocol import HandlerMode, Kind
from .actions import Send, Signal


class ChildState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"


LIVE_STATES = (ChildState.READY, ChildState.BUSY)     # may take jobs, or runs them
KILL_WAIT_S = 5.0          # after SIGKILL, at least: past it the child is declared lost
LOST = "lost"              # what `due` returns for a child past that wait


class StopCause(enum.Enum):
    """Why the parent stops a child."""
    REFRESH = "refresh"                  # recycling: refresh_worker, max jobs, memory, CUDA
    JOB_ENDED = "job ended"              # an inline job timed out or was cancelled
    CANCEL_IGNORED = "cancel ignored"    # a thread or task did not stop when cancelled
    HUNG = "hung"                        # no heartbeat: counts as a death
    SETUP_TIMEOUT = "setup timeout"
    SHUTDOWN = "shutdown"
    GPU_UNHEALTHY = "gpu unhealthy"
    PROTOCOL = "protocol"                # the child sent what the parent cannot read
    INTERNAL_ERROR = "internal error"    # the parent failed on an event about this child

    @property
    def counts_as_death(self) -> bool:
        return self is StopCause.HUNG


class ExitCause(enum.Enum):
    """How a child's life ended, decided once when its exit is seen."""
    SETUP_FAILED = "setup failed"          # the module raised before start()
    SETUP_TIMEOUT = "setup timeout"
    SETUP_DIED = "died during setup"
    STOPPED_IN_SETUP = "stopped in setup"  # shutdown or GPU failure while it started
    STOPPED = "stopped"                    # a planned stop
    HUNG = "hung"                          # stopped for silence: a death
    CRASHED = "crashed"                    # died by itself: a death

    @property
    def in_setup(self) -> bool:
        return self in (ExitCause.SETUP_FAILED, ExitCause.SETUP_TIMEOUT, ExitCause.SETUP_DIED,
                        ExitCause.STOPPED_IN_SETUP)

    @property
    def is_death(self) -> bool:
        return self in (ExitCause.HUNG, ExitCause.CRASHED)


# The start cause that follows a stop, unless the stop's caller said more (restart_as).
_START_CAUSES = {StopCause.REFRESH: "refresh", StopCause.JOB_ENDED: "timeout",
                 StopCause.CANCEL_IGNORED: "cancel", StopCause.HUNG: "hung",
                 StopCause.SETUP_TIMEOUT: "setup_failed", StopCause.GPU_UNHEALTHY: "gpu",
                 StopCause.PROTOCOL: "error", StopCause.INTERNAL_ERROR: "error"}


class Verdict(NamedTuple):
    """What a child's exit means beyond its slot (None from `exited`: nothing)."""
    kind: str              # "warm_refused", "setup_failed" or "tripped"
    message: str
    details: str = ""
    tail: tuple = ()


@dataclass
class ChildRecord:
    pid: int
    started: float
    setup_deadline: float | None
    last_beat: float
    baseline_mb: float = 0.0           # device memory in use before it started
    baseline_known: bool = True        # False for a spare: another child was beside it
    peak_vram_mb: float = 0.0          # torch's peak allocation in any of its jobs
    state: ChildState = ChildState.STARTING
    kind: Kind | None = None
    mode: HandlerMode | None = None
    concurrency: int = 1
    preloaded: list = field(default_factory=list)
    rss: int = 0
    torch: dict | None = None          # the child's allocator figures (heartbeat)
    jobs_run: int = 0
    refresh_reason: str | None = None  # replace once idle
    restart_as: str = ""               # why its successor starts, when the stop says less
    checking_memory: bool = False      # a memory reading is on its way: hold dispatch
    setup_error: tuple | None = None   # (message, traceback) from SetupFailed
    warm_refused: str | None = None    # WarmRefused: it exits, and the next starts cold
    stop_cause: StopCause | None = None
    stop_text: str = ""
    stop_step: int = 0
    stop_next: float | None = None
    cancels: dict = field(default_factory=dict)   # run -> (job id, deadline for its ack)
    slot: int = 0                      # which of the worker's children it is
    cid: int = 0                       # its number, given by the core (actions name it)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def abandoned_ids(self) -> set:
        """Ids of runs ended by the parent that the child has not let go of yet: a new job
        with one of these ids waits for the old run to be gone."""
        return {job_id for job_id, _ in self.cancels.values()}

    @property
    def accepting(self) -> bool:
        """Ready for another job now (given a free slot)."""
        return self.live and self.refresh_reason is None and not self.checking_memory

    def replace_when_idle(self, reason: str | None, cause: str) -> None:
        """Recycle it once idle (the first reason given wins); `cause` labels the next
        child's start."""
        if reason is not None and self.refresh_reason is None:
            self.refresh_reason, self.restart_as = reason, cause

    def start_cause(self, exit_cause: ExitCause) -> str:
        """Why the next child in its place starts (gpu_worker_child_starts_total)."""
        if exit_cause is ExitCause.CRASHED:
            return "crash"
        if exit_cause in (ExitCause.SETUP_FAILED, ExitCause.SETUP_TIMEOUT,
                          ExitCause.SETUP_DIED):
            return "setup_failed"
        if self.restart_as:
            return self.restart_as
        return _START_CAUSES.get(self.stop_cause, "other")

    def ready(self, msg: P.Ready) -> bool:
        if self.state is not ChildState.STARTING:
            return False
        self.state = ChildState.READY
        self.kind, self.mode, self.concurrency = msg.kind, msg.mode, max(1, msg.concurrency)
        self.preloaded = list(msg.preloaded)
        return True

    def begin_stop(self, cause: StopCause, text: str, now: float, grace: float,
                   interrupt: bool = False) -> list:
        """Cooperative first: a Stop message, and SIGUSR1 to interrupt a handler running in
        the child's main thread (or its setup)."""
        if self.stop_cause is not None:
            return []
        actions: list = []
        if interrupt or self.state is ChildState.STARTING:
            actions.append(Signal(signal.SIGUSR1, self.cid))
        self.stop_cause, self.stop_text = cause, text
        self.state = ChildState.STOPPING
        self.stop_step = 0
        self.stop_next = now + grace
        stop = P.Stop(text)
        actions.append(Send(stop, stop.encode(), self.cid))
        return actions

    def escalate(self, now: float, grace: float):
        """The next step of a stop that is taking too long: SIGTERM, then SIGKILL, then
        LOST."""
        self.stop_step += 1
        if self.stop_step >= 3:
            self.stop_next = None
            return LOST
        sig = signal.SIGTERM if self.stop_step == 1 else signal.SIGKILL
        self.stop_next = now + (grace if self.stop_step == 1 else max(grace, KILL_WAIT_S))
        return Signal(sig, self.cid, group=True)

    def exit_cause(self) -> ExitCause:
        if self.setup_error is not None:
            return ExitCause.SETUP_FAILED
        if self.stop_cause is StopCause.SETUP_TIMEOUT:
            return ExitCause.SETUP_TIMEOUT
        if self.state is ChildState.STARTING:
            return ExitCause.SETUP_DIED
        if self.kind is None and self.stop_cause is not None:
            return ExitCause.STOPPED_IN_SETUP
        if self.stop_cause is None:
            return ExitCause.CRASHED
        if self.stop_cause.counts_as_death:
            return ExitCause.HUNG
        return ExitCause.STOPPED

    def resumed(self, now: float) -> None:
        """Its parent was stopped: a fresh heartbeat window; set-up has a second more."""
        self.last_beat = max(self.last_beat, now)
        if self.setup_deadline is not None:
            self.setup_deadline = max(self.setup_deadline, now + 1.0)

    def due(self, now: float, grace: float, heartbeat_timeout: float,
            shutdown_at: float | None, busy: bool):
        """What this child's clocks call for at `now`: the next step of a stop (a Signal,
        or LOST), a stop to begin (cause, text, interrupt), or None."""
        if self.state is ChildState.STOPPING:
            if self.stop_next is not None and now >= self.stop_next:
                return self.escalate(now, grace)
            return None
        if self.state is ChildState.STARTING:
            if self.setup_deadline is not None and now >= self.setup_deadline:
                return StopCause.SETUP_TIMEOUT, "setup timeout", False
            if shutdown_at is not None:
                return StopCause.SHUTDOWN, "shutdown", False
            return None
        if heartbeat_timeout > 0 and now - self.last_beat > heartbeat_timeout:
            return StopCause.HUNG, f"no heartbeat for {now - self.last_beat:.0f}s (hung?)", True
        for job_id, deadline in self.cancels.values():
            if now >= deadline:
                return (StopCause.CANCEL_IGNORED, f"job {job_id} did not stop when cancelled",
                        True)
        if shutdown_at is not None and (not busy or now >= shutdown_at):
            return StopCause.SHUTDOWN, "shutdown", busy
        return None

    def setup_failure(self, cause: ExitCause, how: str, setup_timeout: float,
                      shutting_down: bool) -> str | None:
        """Why the handler could not start, or None if we stopped it during setup."""
        if cause is ExitCause.SETUP_TIMEOUT:
            return f"setup did not finish within {setup_timeout:g}s (WORKER_SETUP_TIMEOUT)"
        if cause is ExitCause.SETUP_FAILED:
            return self.setup_error[0]
        if cause is ExitCause.SETUP_DIED and not shutting_down:
            return f"the worker process {how} during setup"
        return None

    def deadline(self, heartbeat_timeout: float) -> float | None:
        """The child's nearest clock."""
        if self.state is ChildState.STOPPING:
            return self.stop_next
        if self.state is ChildState.STARTING:
            return self.setup_deadline
        times = [deadline for _, deadline in self.cancels.values()]
        if heartbeat_timeout > 0:
            times.append(self.last_beat + heartbeat_timeout)
        return min(times) if times else None
