"""What a queue worker writes to Redis — progress, chunks, final records — in the order
the jobs produced it, each write retried until the server takes it.

One thread, one FIFO: a job's final record is never written before its last chunk. While
the server cannot be reached, or refuses for a moment (full under noeviction, a
failover), the writes wait (with backoff) and nothing is dropped; a write the server
refuses otherwise (a script error, a bug) is logged with its job and dropped, so one bad
write cannot stall every other job (its job runs again after the lease).
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from ..backoff import Backoff

log = logging.getLogger("worker.queue")


@dataclass
class Write:
    job_id: str
    kind: str                         # progress, chunk, final, release
    call: Callable[[], object]        # one script call; its answer goes to `done`
    done: Callable[[object], None] | None = None


class Writer:
    def __init__(self, transient: tuple, passing: Callable[[BaseException], bool] = None):
        self.transient = transient     # exceptions that mean "the server is not there"
        self.passing = passing or (lambda exc: False)   # a refusal that will pass
        self._queue: collections.deque[Write] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gpu-worker-queue-writer",
                                         daemon=True)
        self.outage = threading.Event()     # set while writes wait for the server

    def start(self) -> None:
        self._thread.start()

    def put(self, write: Write) -> None:
        with self._cond:
            self._queue.append(write)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, bound: float) -> int:
        """Stop once the queue is written, or after `bound` seconds; the writes left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(bound)
        with self._cond:
            self._closed = True
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        return left

    def _run(self) -> None:
        backoff = Backoff(0.1, 2.0)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                write = self._queue[0]
            try:
                answer = write.call()
            except Exception as exc:   # noqa: BLE001 - sorted below: wait, or drop one
                if not isinstance(exc, self.transient) and not self.passing(exc):
                    log.exception("the queue refused a %s write; dropped", write.kind,
                                  extra={"job_id": write.job_id})
                    answer = None
                    self._written(write, answer, backoff)
                    continue
                if not self.outage.is_set():
                    log.warning("the queue cannot take writes now (%s); %d write(s) "
                                "wait", exc, self.pending())
                    self.outage.set()
                with self._cond:
                    if self._cond.wait_for(lambda: not self._queue, backoff.next()):
                        return          # close() gave up on them
                continue
            self._written(write, answer, backoff)

    def _written(self, write: Write, answer, backoff: Backoff) -> None:
        """The write is done (or dropped): the next one's turn."""
        if self.outage.is_set():
            log.info("the queue takes writes again")
            self.outage.clear()
        backoff.reset()
        with self._cond:
            if self._queue and self._queue[0] is write:
                self._queue.popleft()
        if write.done is not None:
            try:
                write.done(answer)
            except Exception:    # noqa: BLE001 - a log line's failure is not the job's
                log.exception("after a %s write", write.kind, extra={"job_id": write.job_id})
