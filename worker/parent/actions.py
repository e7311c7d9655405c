"""What the supervisor core asks the loop to do, and what a job source hears.

The core (core.py) never does I/O: each event it handles returns a list of these actions,
and the loop (dispatch.py, supervisor.py) carries them out in order. Actions about a child
name it by its number (`cid`); the ones whose outcome the core must hear (Settle, Spawn,
ReadMemory) are answered with an event on a later turn, never by calling back in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import protocol as P
from ..jobs import JobResult
from .causes import StartCause


class JobListener:
    """What a job source hears about its job. Called from the supervisor's thread: keep
    these quick (hand off to your own thread or loop)."""

    def on_start(self, job_id: str) -> None: ...
    def on_progress(self, job_id: str, value: Any) -> None: ...
    def on_chunk(self, job_id: str, value: Any) -> None: ...
    def on_result(self, result: JobResult) -> None: ...


@dataclass
class Settle:
    """A child is to start in `slot`: first wait until its GPUs have the memory of the
    child before it back (`previous_mb`, that child's baseline; None: nothing to wait
    for). Answered with events.Settled, whose reading is the new child's baseline."""
    slot: int
    cid: int                                  # the child's number, given by the core
    devices: tuple = ()
    previous_mb: float | None = None
    # The child before was lost (it did not exit): if its memory is not back, start only
    # if this many MiB are free (a fit check); None: start after the wait regardless.
    need_mb: float | None = None
    # The pid of the child that went: where NVML's per-process list is ours
    # (gpu_procs.py), the wait is until that pid has left it.
    gone_pid: int | None = None


@dataclass
class Spawn:
    """Start child `cid` in `slot` (off the loop: a launcher may hang); answered with
    events.Spawned or events.SpawnFailed."""
    slot: int
    cid: int
    settings: Any = None                      # the effective Settings it starts with
    env: dict = field(default_factory=dict)   # its CUDA_VISIBLE_DEVICES, WORKER_CHILD_INDEX
    checks: bool = False                      # fitness checks before Ready (slot's first)
    cause: StartCause = StartCause.FIRST      # why: first, refresh, crash... (metrics)
    # A spare (cause SPARE): the active child beside it, its GPUs and its peak VRAM,
    # for the fit check (spare_fit.py) before it starts.
    active_pid: int | None = None
    devices: tuple = ()
    vram_mb: float = 0.0


@dataclass
class ChildReady:
    """A child passed setup in `setup_s` seconds (metrics; nothing to carry out)."""
    slot: int
    setup_s: float


@dataclass
class WarmOff:
    """The forkserver's warm import was refused: children start cold from now on."""
    reason: str


@dataclass
class Send:
    """Write a message to child `cid`'s channel (encoded by the core, which owns the
    decision of what to do with a job that is not JSON)."""
    msg: P.Message
    data: bytes
    cid: int


@dataclass
class Signal:
    sig: int
    cid: int
    group: bool = False      # the child's whole process group, not the child alone


@dataclass
class ReadMemory:
    """Read the memory probe for child `cid` and its GPUs; answered with
    events.MemoryRead."""
    slot: int
    cid: int
    pid: int
    devices: tuple = ()


@dataclass
class Started:
    listener: JobListener
    job_id: str


@dataclass
class Progressed:
    listener: JobListener
    job_id: str
    value: Any


@dataclass
class Chunked:
    listener: JobListener
    job_id: str
    value: Any


@dataclass
class Ended:
    """The job's one final record."""
    listener: JobListener
    result: JobResult
