"""What the supervisor core asks the loop to do, and what a job source hears.

The core (core.py) never does I/O: each event it handles returns a list of these actions,
and the loop (supervisor.py) carries them out in order. Actions about a child name its
slot (the index of the child among the worker's children).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import protocol as P
from ..jobs import JobResult


class JobListener:
    """What a job source hears about its job. Called from the supervisor's thread: keep
    these quick (hand off to your own thread or loop)."""

    def on_start(self, job_id: str) -> None: ...
    def on_progress(self, job_id: str, value: Any) -> None: ...
    def on_chunk(self, job_id: str, value: Any) -> None: ...
    def on_result(self, result: JobResult) -> None: ...


@dataclass
class Spawn:
    """Start a child in `slot`; answer with core.spawned(slot, pid, baseline_mb) or
    core.spawn_failed(slot, error)."""
    slot: int = 0
    env: dict = field(default_factory=dict)   # its CUDA_VISIBLE_DEVICES, WORKER_CHILD_INDEX
    checks: bool = False                      # fitness checks before Ready (slot's first)
    cause: str = "first"                      # why: first, refresh, crash... (metrics)


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
    """Write a message to the child's channel (encoded by the core, which owns the
    decision of what to do with a job that is not JSON)."""
    msg: P.Message
    data: bytes
    slot: int = 0


@dataclass
class Signal:
    sig: int
    group: bool = False      # the child's whole process group, not the child alone
    slot: int = 0


@dataclass
class ReadMemory:
    """Read the memory probe for the child; answer with core.memory(slot, reading)."""
    pid: int
    slot: int = 0


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
