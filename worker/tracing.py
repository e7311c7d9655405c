"""W3C trace context (`traceparent`) for jobs: checked where it comes in, kept on the job
(the handler reads `job["traceparent"]`), written in the job's log lines, forwarded on its
webhook.

An invalid value is ignored, as the W3C spec asks (a bad header must not fail a request).
"""
from __future__ import annotations

import collections
import re
import threading
import time
from typing import Any, Callable

# version-traceid-parentid-flags, lowercase hex; a later version may append fields (kept
# to visible ASCII: the value goes into HTTP headers and log lines).
_FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[!-~]*)?")
MAX_LENGTH = 512


def valid(value: Any) -> str | None:
    """The traceparent when `value` is a usable one, else None."""
    if not isinstance(value, str) or len(value) > MAX_LENGTH:
        return None
    m = _FORMAT.fullmatch(value)
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    if m.group(2) == "0" * 32 or m.group(3) == "0" * 16:
        return None
    return value


def trace_id(traceparent: str) -> str:
    return traceparent[3:35]


class Traces:
    """Job id → trace id, for log lines (the formatter reads it from any thread). An ended
    job keeps its entry for KEEP_S seconds: its result's delivery and webhook lines come
    after its end."""

    KEEP_S = 300.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._ids: dict = {}          # job id -> [trace id, ended at or None]
        self._ended: collections.deque = collections.deque()   # (ended at, job id)

    def remember(self, job: Any) -> None:
        """Note the trace of a job that carries a valid one (any shape is safe here)."""
        if type(job) is dict and "traceparent" in job:
            traceparent, job_id = valid(job["traceparent"]), job.get("id")
            if traceparent is not None and isinstance(job_id, str):
                with self._lock:
                    self._ids[job_id] = [trace_id(traceparent), None]

    def ended(self, job_id: str) -> None:
        now = self._clock()
        with self._lock:
            entry = self._ids.get(job_id)
            if entry is not None and entry[1] is None:
                entry[1] = now
                self._ended.append((now, job_id))
            while self._ended and now - self._ended[0][0] > self.KEEP_S:
                at, old = self._ended.popleft()
                entry = self._ids.get(old)
                if entry is not None and entry[1] == at:
                    del self._ids[old]

    def get(self, job_id: str) -> str | None:
        entry = self._ids.get(job_id)
        return entry[0] if entry is not None else None


TRACES = Traces()     # one per process: log lines of every job the parent holds
