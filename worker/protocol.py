"""The parent <-> child messages: one small dataclass each, framed JSON on a socketpair.

Shared by both sides of the process boundary (like jobs.py, config.py and targets.py).
JSON rather than pickle: a job is JSON already, an output must be JSON anyway (so encoding
is the serialisability check), and nothing that came from the network is ever unpickled.
A frame is a 4-byte big-endian length and a JSON array [kind, field, ...]. Typed values
(handler kind and mode, job state and reason) cross as their enum's value and are enums
again on the other side.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar

from .jobs import JobState, Reason

_HEADER = struct.Struct("!I")
_REGISTRY: dict[str, type] = {}
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Kind(str, Enum):
    """What the handler function is."""
    SYNC = "sync"
    GENERATOR = "generator"
    ASYNC = "async"
    ASYNC_GENERATOR = "async_generator"

    @property
    def is_async(self) -> bool:
        return self in (Kind.ASYNC, Kind.ASYNC_GENERATOR)

    @property
    def streams(self) -> bool:
        return self in (Kind.GENERATOR, Kind.ASYNC_GENERATOR)


class HandlerMode(str, Enum):
    """How the child runs jobs; it decides how a job is stopped."""
    INLINE = "inline"     # sync handler in the main thread: stopping a job means a new child
    THREADS = "threads"   # sync handler with a concurrency_modifier: a thread per job
    TASKS = "tasks"       # async handler: an asyncio task per job


class Message:
    KIND: ClassVar[str] = ""
    _names: ClassVar[tuple] = ()
    _enums: ClassVar[dict] = {}      # field name -> {value: enum member}, for decoding

    def encode(self) -> bytes:
        """The framed bytes; raises TypeError/ValueError if a value is not JSON."""
        payload = _encode([self.KIND, *(getattr(self, n) for n in self._names)]).encode()
        return _HEADER.pack(len(payload)) + payload


def _message(tag: str, **enums: type):
    def wrap(cls):
        cls = dataclass(cls)
        cls.KIND = tag
        cls._names = tuple(f.name for f in fields(cls) if f.name != "raw")
        cls._enums = {name: {m.value: m for m in enum} for name, enum in enums.items()}
        _REGISTRY[tag] = cls
        return cls
    return wrap


# --- parent -> child ------------------------------------------------------------------

@_message("run")
class Run(Message):
    job: dict
    raw: bytes | None = None     # the job's JSON as received: forwarded without re-encoding

    def encode(self) -> bytes:
        if self.raw is None:
            payload = _encode([self.KIND, self.job]).encode()
        else:
            payload = b'["run",' + self.raw + b"]"
        return _HEADER.pack(len(payload)) + payload


@_message("cancel")
class Cancel(Message):
    job_id: str


@_message("stop")
class Stop(Message):
    reason: str


# --- child -> parent ------------------------------------------------------------------

@_message("ready", kind=Kind, mode=HandlerMode)
class Ready(Message):
    kind: Kind
    mode: HandlerMode
    concurrency: int
    config: dict         # start() keys that name settings (they override the parent's)
    preloaded: list      # preload modules that were already imported when the child began


@_message("setup_failed")
class SetupFailed(Message):
    message: str
    traceback: str


@_message("progress")
class Progress(Message):
    job_id: str
    value: Any


@_message("chunk")
class Chunk(Message):
    job_id: str
    value: Any


@_message("done", state=JobState, reason=Reason)
class Done(Message):
    job_id: str
    state: JobState
    reason: Reason
    body: dict
    refresh: bool
    concurrency: int
    peak_vram_mb: float | None = None    # torch's peak allocation during the job, if CUDA


@_message("heartbeat")
class Heartbeat(Message):
    rss: int             # bytes, the child process itself
    gpu: Any             # torch allocator figures (MiB) once the child uses CUDA, else None


class ProtocolError(ValueError):
    pass


def decode(payload: bytes) -> Message:
    try:
        kind, *values = json.loads(payload)
        msg = _REGISTRY[kind](*values)
        for name, members in msg._enums.items():
            setattr(msg, name, members[getattr(msg, name)])
        return msg
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad message from the other side: {exc}") from None


class FrameReader:
    """Accumulates bytes and yields complete frames' payloads."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if n - pos - 4 < size:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out
