"""How much of a job's stream output a worker holds unread: one bound, in chunks and in
bytes, for the local API's records, the Redis fleet's chunk lists and the RunPod lanes.

The bytes are derived from WORKER_MAX_RESULT_MB (chunks not yet read are the job's output
as much as its result is; with return_aggregate_stream they become the result); where that
is 0 (no limit on a result) a fixed ceiling holds. Past either bound the oldest chunks go
(a reader that comes late wants the newest), the job runs on and its final state arrives as
ever; the first drop is logged once per job and the record counts the chunks dropped.
"""
from __future__ import annotations

import collections
import json
import logging
from typing import Any

log = logging.getLogger("worker.stream")

MAX_CHUNKS = 10_000                 # chunks held unread per job
CEILING_BYTES = 256 * 2**20         # bytes held unread per job where a result has no limit
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def max_bytes(max_result_mb: float) -> int:
    """The bytes of chunks a job may hold unread (WORKER_MAX_RESULT_MB, or the ceiling)."""
    return max(1, int(max_result_mb * 2**20)) if max_result_mb > 0 else CEILING_BYTES


def encode(value: Any) -> str:
    """A chunk as it is held and answered: its JSON (the child checked it is JSON)."""
    return _encode(value)


def too_large(size: int, limit_mb: float) -> str:
    """Why a result over WORKER_MAX_RESULT_MB ended FAILED (ResultTooLarge), in every mode."""
    return (f"the job's result is {size / 2**20:.1f} MiB; the limit is {limit_mb:g} MiB "
            "(WORKER_MAX_RESULT_MB). Store large outputs elsewhere (e.g. a bucket) and "
            "return a link.")


def nbytes(text: str) -> int:
    """Its size in UTF-8, as it is answered (an ASCII one, the usual, is not encoded)."""
    return len(text) if text.isascii() else len(text.encode())


def said(job_id: str, limit_bytes: int) -> None:
    """The one log line of a job whose unread chunks reached the bound."""
    log.warning("stream output not read fast enough: the oldest chunks are dropped (a job "
                "holds at most %d chunks or %.1f MiB unread; WORKER_MAX_RESULT_MB); the job "
                "runs on, and its record counts them (streamDropped)", MAX_CHUNKS,
                limit_bytes / 2**20, extra={"job_id": job_id})


class Unread:
    """A job's chunks not yet read, oldest first, within MAX_CHUNKS and `limit` bytes."""

    __slots__ = ("items", "bytes", "dropped", "limit")

    def __init__(self, limit: int):
        self.items: collections.deque = collections.deque()    # (value, size)
        self.bytes = 0
        self.dropped = 0
        self.limit = limit

    def add(self, value: Any, nbytes: int) -> bool:
        """Hold a chunk; True when this is the job's first drop (say it, once)."""
        before = self.dropped
        if nbytes > self.limit:           # alone past the bound: it is the one that goes
            self.dropped += 1
        else:
            items = self.items
            while items and (len(items) >= MAX_CHUNKS or self.bytes + nbytes > self.limit):
                self.bytes -= items.popleft()[1]
                self.dropped += 1
            items.append((value, nbytes))
            self.bytes += nbytes
        return before == 0 and self.dropped > 0

    def drain(self) -> list:
        """The chunks held, in order; none held after."""
        return [v for v, _ in self.drain_items()]

    def drain_items(self) -> list:
        """The chunks held as (value, size), in order; none held after."""
        out = list(self.items)
        self.items.clear()
        self.bytes = 0
        return out
