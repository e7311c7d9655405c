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
import os
import re
import struct
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar

from .jobs import JobState, Reason
from .jsonlimits import parse

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

# A run is one attempt at a job in one child. The parent numbers runs; every message about
# a running job names its run, never its job id alone, so a late answer from an abandoned
# run can never be taken for the answer of a newer run of the same id.

@_message("run")
class Run(Message):
    run: int
    job: dict
    raw: Any = None     # the job's JSON as received (bytes, or a tuple of parts): forwarded as is

    def encode(self):
        """The frame's bytes; with `raw`, a tuple of parts (the body is never copied)."""
        if self.raw is None:
            payload = _encode([self.KIND, self.run, self.job]).encode()
            return _HEADER.pack(len(payload)) + payload
        parts = self.raw if isinstance(self.raw, tuple) else (self.raw,)
        head = b'["run",%d,' % self.run
        size = len(head) + sum(len(p) for p in parts) + 1
        return (_HEADER.pack(size) + head, *parts, b"]")


@_message("cancel")
class Cancel(Message):
    run: int


@_message("stop")
class Stop(Message):
    reason: str


@_message("check")
class Check(Message):
    """Run the GPU check (child/gpu_check.py) now and answer with Checked: asked of an
    idle spare after an application Xid, before it may take over."""
    why: str


# --- child -> parent ------------------------------------------------------------------

@_message("ready", kind=Kind, mode=HandlerMode)
class Ready(Message):
    kind: Kind
    mode: HandlerMode
    concurrency: int
    config: dict         # start() keys that name settings (they override the parent's)
    preloaded: list      # preload modules that were already imported when the child began
    code: dict | None = None    # reload mode: the handler's files and packages (code_files)
    notes: list | None = None   # start() keys misspelt or set too late, said once by the parent


@_message("setup_failed")
class SetupFailed(Message):
    message: str
    traceback: str
    code: dict | None = None    # reload mode: what to watch for the fix (code_files)


@_message("warm_refused")
class WarmRefused(Message):
    """The forkserver's warm import cannot be used (warm_import.py says why); the child
    exits and the parent restarts the forkserver without it."""
    reason: str


@_message("progress")
class Progress(Message):
    run: int
    value: Any


@_message("chunk")
class Chunk(Message):
    run: int
    value: Any


@_message("done", state=JobState, reason=Reason)
class Done(Message):
    run: int
    state: JobState
    reason: Reason
    body: dict
    refresh: bool | str          # "cold": a spare set up before must not take over
    concurrency: int
    peak_vram_mb: float | None = None    # torch's peak allocation during the job, if CUDA
    gpu: Any = None                      # torch's figures now (as a heartbeat's), if CUDA


@_message("checked")
class Checked(Message):
    ok: bool
    message: str         # the check's summary, or why it failed


@_message("heartbeat")
class Heartbeat(Message):
    rss: int             # bytes, the child process itself
    gpu: Any             # torch allocator figures (MiB) once the child uses CUDA, else None


@dataclass
class Garbled(Message):
    """A frame that could not be decoded, with the run it names when that much is legible:
    the guard that turns it into that one job's failure instead of a dead loop."""
    tag: str | None
    run: int | None
    error: str

    @property
    def claims(self) -> type | None:
        """The message class its legible tag names (None: no tag, or an unknown one)."""
        return _REGISTRY.get(self.tag) if self.tag else None


_HEAD = re.compile(rb'\s*\[\s*"([a-z_]{1,20})"\s*(?:,\s*(\d{1,18})\s*[,\]])?')


def decode(payload: bytes) -> Message:
    """The message in a frame; any failure at all (bad JSON, nesting too deep for this
    side's stack, a wrong shape) becomes a Garbled message rather than an exception."""
    try:
        kind, *values = parse(payload)
        msg = _REGISTRY[kind](*values)
        for name, members in msg._enums.items():
            setattr(msg, name, members[getattr(msg, name)])
        return msg
    except Exception as exc:    # noqa: BLE001 - the boundary: whatever it is, it is one frame's
        head = _HEAD.match(bytes(payload[:64]))
        tag = head.group(1).decode() if head else None
        run = int(head.group(2)) if head and head.group(2) else None
        return Garbled(tag, run, f"{type(exc).__name__}: {exc}"[:500])


# The child's stdout/stderr lines written by a job's own thread or task start with
# LINE_TAG + job id + LINE_END (child/joblog.py); the parent strips it (output.py).
LINE_TAG, LINE_END = "\x1e", "\x1f"     # ASCII record/unit separators: never in a job id


def split_tag(line: str) -> tuple[str | None, str]:
    """(job id, line) for a tagged line, (None, line) otherwise."""
    if line.startswith(LINE_TAG):
        end = line.find(LINE_END, 1, 260)
        if end > 0:
            return line[1:end], line[end + 1:]
    return None, line


# The largest frame a reader takes when its owner names no smaller one: a header above a
# reader's ceiling is a garbled channel, never an allocation.
FRAME_CEILING = 2**31


class FrameTooLarge(ValueError):
    """A frame header announced more than the reader takes: the channel cannot be trusted
    (nothing was allocated for it)."""


class FrameReader:
    """Reads frames from a socket: small ones through one reusable buffer (a fresh bytes
    object per read costs an mmap, an mremap and a munmap per message), a large one into a
    buffer that grows with the bytes that actually arrived (doubling, up to the announced
    size: a header alone never sizes an allocation), kept for the next large one up to KEEP
    bytes (a fresh large buffer pays its page faults again; docs/benchmarks.md has the
    figures). A header above `limit` raises FrameTooLarge. A frame is valid until the next
    read."""

    CHUNK = 256 * 1024
    KEEP = 32 * 2**20
    FIRST = 4 * CHUNK          # a large frame's first buffer, at most

    def __init__(self, limit: int = FRAME_CEILING):
        self.limit = limit
        self._buf = bytearray()           # the start of a frame not complete yet
        self._chunk = bytearray(self.CHUNK)
        self._spare = bytearray()         # the last large frame's buffer, for the next one
        self._big: bytearray | None = None   # the large frame's buffer while it arrives
        self._size = 0                    # its announced size
        self._got = 0
        self.drained = False              # the last read was short: the socket is empty

    def read_from(self, fd: int) -> list | None:
        """One read from `fd`: the frames it completed; None at EOF. A non-blocking fd
        with nothing to read raises BlockingIOError."""
        if self._big is not None:
            if self._got == len(self._big):
                self._grow()
            view = memoryview(self._big)[self._got:self._size]   # never past the frame
            n = os.readv(fd, [view])
            if n == 0:
                return None
            self._got += n
            self.drained = n < len(view)
            if self._got < self._size:
                return []
            big, self._big = self._big, None
            self._spare = big if len(big) <= self.KEEP else bytearray()
            return [memoryview(big)[:self._size]]
        n = os.readv(fd, [self._chunk])
        if n == 0:
            return None
        self.drained = n < self.CHUNK
        return self.feed(memoryview(self._chunk)[:n])

    def _grow(self) -> None:
        """Twice the bytes held so far (at most the announced size), the bytes kept."""
        old = self._big
        new = bytearray(min(self._size, max(2 * len(old), self.FIRST)))
        new[:self._got] = memoryview(old)[:self._got]
        self._big = new

    def feed(self, data) -> list:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > self.limit:
                raise FrameTooLarge(f"a frame header announces {size} bytes, more than the "
                                    f"{self.limit} this channel takes")
            if n - pos - 4 < size:
                if size > self.CHUNK:         # the rest goes into a buffer of its own
                    got = n - pos - 4
                    spare, self._spare = self._spare, bytearray()
                    self._big = spare if len(spare) >= min(size, max(got, self.FIRST)) \
                        else bytearray(min(size, max(2 * got, self.FIRST)))
                    self._size, self._got = size, got
                    self._big[:got] = buf[pos + 4:]
                    pos = n
                break
            out.append(buf[pos + 4:pos + 4 + size])
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out
