"""The parent's reader of a child's captured stdout/stderr.

A thread of its own, so a handler that floods its output never delays control messages.
Each line goes to a sink with its job id: the one the child tagged it with (a line a job's
own Python code wrote) if that job was sent to this child, else the ids of the jobs
running when it was read (output from C code or subprocesses); a tag naming any other id
is user text that looks like a tag, and is kept in the line as text. The last lines are kept for error messages (a crash at import is
explained by its stderr). A progress bar drawn with carriage returns is logged as its final
state, and its state so far at most every few seconds (redraws.py).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import threading
import time
from typing import Callable

from ..protocol import split_tag
from ..redraws import PROGRESS_EVERY, Redraws, last_drawn

child_log = logging.getLogger("worker.child")

MAX_LINE = 16384
# RunPodLogger's levels (the SDK's and ours) as logging levels.
SDK_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
              "TIP": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}
Sink = Callable[[str, str, tuple], None]   # (stream name, line, job ids)


class OutputPump(threading.Thread):
    def __init__(self, streams: dict, job_ids: Callable[[], tuple], sink: Sink,
                 known: Callable[[str], bool] = lambda job: True, tail: int = 40,
                 progress_every: float = PROGRESS_EVERY):
        super().__init__(name="gpu-worker-output", daemon=True)
        self._streams = streams          # fd -> "stdout" | "stderr"
        self._job_ids = job_ids
        self._sink = sink
        self._known = known              # was this job id sent to this child?
        self.tail: collections.deque = collections.deque(maxlen=tail)
        self._partial = {fd: b"" for fd in streams}
        self._redraws = Redraws(progress_every)    # progress bars: their state, now and then
        self._give_up_at: float | None = None

    def finish(self, timeout: float = 1.0) -> None:
        """The child has exited: read what is left, then stop, even if a stray grandchild
        still holds the pipe open."""
        self._give_up_at = time.monotonic() + timeout
        self.join(timeout + 0.5)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for fd in self._streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        open_fds = set(self._streams)
        try:
            while open_fds:
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    break
                for key, _ in sel.select(timeout=0.2):
                    fd = key.fd
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(fd)
                        open_fds.discard(fd)
                        self._emit(fd, self._partial.pop(fd, b""), final=True)
                        continue
                    self._emit(fd, data)
        finally:
            for fd, rest in list(self._partial.items()):
                self._emit(fd, rest, final=True)
            sel.close()

    def _emit(self, fd: int, data: bytes, final: bool = False) -> None:
        buf = self._partial.get(fd, b"") + data
        lines = buf.split(b"\n")
        rest = b"" if final else lines.pop()
        if lines:                    # a line ended: a bar drawn next has its own clock
            self._redraws.ended(fd)
        if b"\r" in rest:           # a bar being drawn: keep its state, show it now and then
            head, _, tail = rest.rpartition(b"\r")
            state, show = self._redraws.drawn(fd, head.decode("utf-8", "replace"))
            rest = b"\r" + (tail or state.encode())
            if show is not None:
                lines.append(show.encode())
        if len(rest) > MAX_LINE:       # a line without end: pass it on in pieces
            lines.append(rest)
            rest = b""
        if not final:
            self._partial[fd] = rest
        if not lines:
            return
        running = None
        name = self._streams[fd]
        for raw in lines:
            if not raw and final:
                continue
            text = raw.decode("utf-8", "replace").rstrip("\r")
            job, line = split_tag(text)
            if job is not None and not self._known(job):
                job, line = None, text       # not this child's job: the "tag" is text
            if "\r" in line:           # drawn over: its final state, not the raw redraws
                line = last_drawn(line)
                if not line:
                    continue
            if job is not None:
                ids = (job,)
            else:      # fd-level output (C code, subprocesses): every job in the child
                ids = running = self._job_ids() if running is None else running
            self.tail.append(f"{name}: {line}")
            try:
                self._sink(name, line, ids)
            except Exception:      # noqa: BLE001 - a line must never stop the reading
                logging.getLogger("worker").exception("could not log a line of the child's "
                                                      "output: %r", line[:200])


def sdk_line(line: str) -> tuple | None:
    """(level, message, job id) for a line RunPodLogger wrote — JSON
    {"requestId", "message", "level"} or `LEVEL  | message` —, else None."""
    if line.startswith('{"requestId"'):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):     # a line that only looks like one
            return None
        if isinstance(record, dict) and record.keys() == {"requestId", "message", "level"} \
                and record["level"] in SDK_LEVELS:
            job = record["requestId"]
            return (SDK_LEVELS[record["level"]], str(record["message"]),
                    job if isinstance(job, str) else None)
        return None
    if line[7:9] == "| " and line[:7].rstrip() in SDK_LEVELS:
        return SDK_LEVELS[line[:7].rstrip()], line[9:], None
    return None


def log_child_line(stream: str, line: str, job_ids: tuple) -> None:
    """The default sink: a child's line into the parent's log, under its job."""
    sdk = sdk_line(line)          # a RunPodLogger line keeps its level and its job
    if sdk is not None:
        level, message, job_id = sdk
        for job in job_ids:               # the text form repeats the job id we tag with
            if message.startswith(f"{job} | "):
                message = message[len(job) + 3:]
                break
        child_log.log(level, "%s", message, extra={"job_id": job_id or ",".join(job_ids) or None})
        return
    child_log.info("%s: %s", stream, line, extra={"job_id": ",".join(job_ids) or None})
