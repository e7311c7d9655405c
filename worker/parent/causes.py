"""The supervisor's typed vocabulary: why a child stops, how its life ended, why the next
one starts, and what an ending means for the worker. Decisions compare these, never text.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


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
    def swaps_in_spare(self) -> bool:
        """After this stop a ready spare takes over at once (when no job is in the way)."""
        return self in _SWAP


_SWAP = frozenset({StopCause.REFRESH, StopCause.JOB_ENDED, StopCause.CANCEL_IGNORED,
                   StopCause.HUNG, StopCause.PROTOCOL, StopCause.INTERNAL_ERROR})


class ExitCause(enum.Enum):
    """How a child's life ended, judged once when its exit is seen (child.Child.judge)."""
    WARM_REFUSED = "warm import refused"   # the forkserver's warm import: it starts cold
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


class StartCause(str, enum.Enum):
    """Why a child starts: the label of gpu_worker_child_starts_total (a str: the metric's
    label is its value)."""
    FIRST = "first"
    SPARE = "spare"                  # a spare, started beside the active child
    REFRESH = "refresh"
    REFRESH_COLD = "refresh_cold"    # the job asked for a cold refresh: no spare swap
    RECYCLE = "recycle"              # WORKER_MAX_JOBS_PER_CHILD
    MEMORY = "memory"                # over a memory limit between jobs
    CUDA_ERROR = "cuda_error"
    TIMEOUT = "timeout"
    CANCEL = "cancel"
    HUNG = "hung"
    CRASH = "crash"
    SETUP_FAILED = "setup_failed"
    GPU = "gpu"
    ERROR = "error"
    LOST = "lost"
    WARM_OFF = "warm_off"            # the forkserver's warm import was refused
    RELOAD = "reload"
    OTHER = "other"


# The start cause that follows a stop, unless the stop's caller said more.
START_AFTER_STOP = {StopCause.REFRESH: StartCause.REFRESH, StopCause.JOB_ENDED: StartCause.TIMEOUT,
                    StopCause.CANCEL_IGNORED: StartCause.CANCEL, StopCause.HUNG: StartCause.HUNG,
                    StopCause.SETUP_TIMEOUT: StartCause.SETUP_FAILED,
                    StopCause.GPU_UNHEALTHY: StartCause.GPU, StopCause.PROTOCOL: StartCause.ERROR,
                    StopCause.INTERNAL_ERROR: StartCause.ERROR}


@dataclass(frozen=True)
class StopOrder:
    """A stop a child's clocks call for."""
    cause: StopCause
    text: str
    interrupt: bool = False          # SIGUSR1 too: a handler in its main thread, or setup


class VerdictKind(enum.Enum):
    WARM_REFUSED = "warm refused"    # children start cold from now on
    SETUP_FAILED = "setup failed"    # no child could start here
    TRIPPED = "tripped"              # the slot's restart breaker tripped


@dataclass(frozen=True)
class Verdict:
    """What a child's end means beyond its slot, for the core to act on."""
    kind: VerdictKind
    message: str
    details: str = ""
    tail: tuple = ()
