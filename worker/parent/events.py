"""Everything the supervisor core hears, as small typed values.

The core has one entry, `SupervisorCore.handle(event, now) -> actions`, and every input
comes through it: commands from the sources' threads, what a child's host saw (a message,
an exit), the outcome of an action the loop carried out (a child started, a reading
taken), the passing of time. Events about a child name its slot and its child number
(`cid`, given by the core when it asked for that child): an event about a child the core
has already let go of is dropped, so a late exit or message can never touch its successor.

Each event says which job it concerns (`job_id`, or the run in a child message) and
which child, so the guard around the core (core.recover) knows what an exception on it
must fail without knowing the event's meaning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import protocol as P
from .actions import JobListener


class Event:
    """Base. An event about one child has `slot` and `cid`; one about a job, `job_id`;
    a child's message about a run, `run` (what_it_concerns reads them)."""
    __slots__ = ()
    final = False          # the loop's last words: no step follows (nothing else runs)
    every_child = False    # its handling reaches every child (a fault there may too)


def what_it_concerns(event: Event) -> tuple:
    """(slot, child number, job id, run): what an exception on `event` may have left
    half-handled; None where it names none."""
    return (getattr(event, "slot", None), getattr(event, "cid", None),
            getattr(event, "job_id", None), getattr(event, "run", None))


# --- from the sources (any thread, through the command queue) ---------------------------

@dataclass(slots=True)
class Submit(Event):
    job: Any                       # as given: the core validates it
    listener: JobListener
    submitted: float
    raw: Any = None                # the job's exact JSON (bytes or parts), when known
    age: float = 0.0               # seconds it waited in a queue before this worker's
    tracked: Any = None            # set by the core: the job as it holds it (for recover)


@dataclass(slots=True)
class Cancel(Event):
    job_id: str
    queued_only: bool = False


@dataclass(slots=True)
class Refresh(Event):
    every_child = True
    reason: str = "requested"


@dataclass(slots=True)
class Stop(Event):
    every_child = True
    grace: float = 0.0


@dataclass(slots=True)
class GpuEvent(Event):
    every_child = True
    xid: int
    what: str                      # "xid", "ecc", "lost"...


@dataclass(slots=True)
class Tick(Event):
    """Time has passed (also the first event: it asks for the first children)."""
    every_child = True


@dataclass(slots=True)
class Resumed(Event):
    """The worker itself was stopped for `gap` seconds (SIGSTOP, a paused VM, no CPU): what
    its children sent meanwhile waits unread. Fed before it is read."""
    every_child = True
    gap: float


# --- outcomes of the loop's actions (delivered on a later turn) -------------------------

@dataclass(slots=True)
class Settled(Event):
    """The slot's GPUs have their memory back (or the wait gave up): `used_mb` is the
    baseline of the child about to start. `fits`: False when a Settle with need_mb found
    neither the memory back nor that much free."""
    slot: int
    cid: int
    used_mb: float
    fits: bool = True


@dataclass(slots=True)
class Spawned(Event):
    slot: int
    cid: int
    pid: int


@dataclass(slots=True)
class SpawnFailed(Event):
    """The start failed. `transient`: out of descriptors or memory for a moment, or the
    launcher died or did not answer in time: worth a retry."""
    slot: int
    cid: int
    error: str
    transient: bool = False
    short_of_gpu: bool = False     # a spare's fit check found too little GPU memory


@dataclass(slots=True)
class MemoryRead(Event):
    """The reading a ReadMemory asked for (None if the probe failed)."""
    slot: int
    cid: int
    reading: Any


# --- from a child's host (the loop's thread) ---------------------------------------------

@dataclass(slots=True)
class Message(Event):
    slot: int
    cid: int
    msg: P.Message

    @property
    def run(self) -> int | None:
        return getattr(self.msg, "run", None)


@dataclass(slots=True)
class Exited(Event):
    """The child is gone. `messages`: what it wrote before it went, read with its exit,
    so none of it can send a job to a child already known to be gone."""
    slot: int
    cid: int
    code: int | None
    tail: list                     # its last lines of output
    messages: tuple = ()


# --- the loop's own end ------------------------------------------------------------------

@dataclass(slots=True)
class LoopFailed(Event):
    """Even the guard failed: every job held ends now and the worker is broken."""
    text: str
    final = True


@dataclass(slots=True)
class LoopEnded(Event):
    """The loop is ending: a worker still running is now stopped."""
    final = True


ALL = (Submit, Cancel, Refresh, Stop, GpuEvent, Tick, Resumed, Settled, Spawned, SpawnFailed,
       MemoryRead, Message, Exited, LoopFailed, LoopEnded)
