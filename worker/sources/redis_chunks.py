"""A queue worker's progress and stream chunks on their way to Redis: held within a bound
while they wait for the writer (through an outage they would pile up; a batch taken and
not yet written is held beside them, so at most twice the stream bound).

A job has one chunk write in the writer's FIFO at a time: chunks that come while it waits
join it (within the stream bound), so the job's final record is still written after its
last chunk, and a fast generator costs one script call per batch instead of one per
chunk. Likewise one progress write at a time, which writes the latest value: only that
one matters.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from .. import stream_bound
from ..fleet import records


class Outgoing:
    """One job's chunks not yet written to Redis."""

    def __init__(self, job_id: str, limit: int, write: Callable[[int, list, int], Any],
                 write_progress: Callable[[bytes], Any]):
        self.job_id = job_id
        self.limit = limit
        self._write = write           # (batch number, chunk jsons, dropped here) -> answer
        self._write_progress = write_progress
        self._progress: bytes | None = None    # the latest value not yet written
        self._progress_queued = False          # a progress write waits in the FIFO
        self._lock = threading.Lock()
        self._unread = stream_bound.Unread(limit)
        self._queued = False          # a write for this job waits in the writer's FIFO
        self._dropped_sent = 0
        self._seq = 0                 # the last batch's number
        self._pending: tuple | None = None    # (number, chunks, dropped): not yet written
        self._said = False            # the job's drops were logged

    def add(self, value: Any) -> bool:
        """Hold a chunk; True when the writer needs a new write for this job (one that
        calls `flush`)."""
        data = records.dumps(value)
        with self._lock:
            first = self._unread.add(data, len(data))
            queue, self._queued = not self._queued, True
        if first:
            self._say()
        return queue

    def flush(self) -> Any:
        """The writer's call: the chunks held so far, in numbered batches. A batch the
        server could not be seen to take is sent again as it was, with its number (the
        script skips one it ran already: no chunk twice), before any newer one."""
        answer = 1
        while True:
            with self._lock:
                self._queued = False        # chunks that come from now on queue a write
                if self._pending is None:
                    items = self._unread.drain_items()
                    dropped = self._unread.dropped - self._dropped_sent
                    if not items and not dropped:
                        return answer
                    self._dropped_sent = self._unread.dropped
                    self._seq += 1
                    self._pending = (self._seq, [data for data, _ in items], dropped)
                seq, batch, dropped = self._pending
            answer = self._write(seq, batch, dropped)     # raises: the same batch next time
            with self._lock:
                self._pending = None
            if answer == 2:
                self._say()

    def progress(self, value: Any) -> bool:
        """The latest progress; True when the writer needs a write (one that calls
        `flush_progress`)."""
        data = records.dumps(value)
        with self._lock:
            self._progress = data
            queue, self._progress_queued = not self._progress_queued, True
        return queue

    def flush_progress(self) -> Any:
        """The writer's call: the latest progress (again after an outage, unless a newer
        one came meanwhile)."""
        with self._lock:
            data, self._progress = self._progress, None
            self._progress_queued = False
        if data is None:
            return 1
        try:
            return self._write_progress(data)
        except BaseException:
            with self._lock:
                if self._progress is None:
                    self._progress = data
            raise

    def _say(self) -> None:
        with self._lock:
            said, self._said = self._said, True
        if not said:
            stream_bound.said(self.job_id, self.limit)
