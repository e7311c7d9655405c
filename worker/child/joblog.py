"""Which job printed a line: the child tags lines written from Python with the job whose
thread or task wrote them, so the parent never has to guess from timing.

sys.stdout and sys.stderr become a thin wrapper. While a job runs, the thread (threads
mode, inline) or asyncio task (tasks mode) running it has its id in a context variable;
its writes are buffered per job and go out as whole lines prefixed with TAG + id + END.
A job's unfinished last line goes out when the job ends (`flush_job`), before its result.
Writes outside a job, and fd-level writes (C code, subprocesses), carry no tag: the
parent then names every job in the child.
"""
from __future__ import annotations

import contextvars
import sys
import threading
from typing import Any

from ..protocol import LINE_END as END, LINE_TAG as TAG
from ..redraws import Redraws

MAX_PENDING = 16384             # a line without an end goes out in pieces

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gpu_worker_job", default=None)


class JobTaggedStream:
    def __init__(self, stream: Any):
        self._stream = stream
        self._pending: dict[str, str] = {}
        self._redraws = Redraws()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:     # encoding, buffer, fileno, isatty, ...
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        size = len(text)
        if TAG in text or END in text:    # user text can never make (or break) a tag
            text = text.replace(TAG, "\\x1e").replace(END, "\\x1f")
        job = current_job.get()
        if job is None:
            self._stream.write(text)
            return size
        with self._lock:
            text = self._pending.pop(job, "") + text
            *lines, rest = text.split("\n")
            if lines:
                self._redraws.ended(job)
            if "\r" in rest:      # a progress bar: its state now and then, not every redraw
                head, _, tail = rest.rpartition("\r")
                state, show = self._redraws.drawn(job, head)
                rest = "\r" + (tail or state)
                if show is not None:
                    lines.append(show)
            if len(rest) > MAX_PENDING:
                lines.append(rest)
                rest = ""
            if rest:
                self._pending[job] = rest
        if lines:
            prefix = f"{TAG}{job}{END}"
            self._stream.write("".join(f"{prefix}{line}\n" for line in lines))
        return size

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush_job(self, job: str) -> None:
        with self._lock:
            rest = self._pending.pop(job, "")
            self._redraws.ended(job)
        if rest:
            self._stream.write(f"{TAG}{job}{END}{rest}\n")
        self._stream.flush()


def install() -> None:
    sys.stdout = JobTaggedStream(sys.stdout)
    sys.stderr = JobTaggedStream(sys.stderr)


def job_ended(job: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        flush = getattr(stream, "flush_job", None)
        try:
            if flush is not None:
                flush(job)
            else:
                stream.flush()
        except Exception:   # noqa: BLE001 - a closed or replaced stream must not fail the job
            pass
