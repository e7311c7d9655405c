"""Delivery of a RunPod worker's posts: progress, stream chunks and results.

Posts of one job go in order (a job is pinned to one poster thread); connection errors,
5xx and 429 are retried with backoff; a result the queue refuses as too large (400/413)
becomes a FAILED error record rather than nothing; a result that still cannot be
delivered is kept and retried every REDELIVER_EVERY seconds until the worker exits.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import requests

log = logging.getLogger("worker.runpod")

POSTERS = 4
POST_TIMEOUT = (5.0, 60.0)
POST_ATTEMPTS = 5
REDELIVER_EVERY = 5.0


class Backoff:
    """Exponential backoff with jitter; reset() after a success."""

    def __init__(self, first: float, cap: float):
        self.first, self.cap, self.current = first, cap, 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


@dataclass
class Post:
    kind: str            # "done", "stream", "progress"
    job_id: str
    url: str
    body: Any
    data: bytes | None = None    # the body encoded, once
    attempts: int = 0
    replaced: bool = False   # a refused result was already replaced by an error record

    def encoded(self) -> bytes:
        if self.data is None:
            self.data = json.dumps(self.body, ensure_ascii=False).encode()
        return self.data

    def replace(self, body: dict) -> None:
        self.body, self.data, self.replaced = body, None, True


class Delivery:
    def __init__(self, session: Callable[[], requests.Session],
                 refused_body: Callable[[str], dict], hurry: Callable[[], bool]):
        self._session = session              # a new session per thread
        self._refused_body = refused_body    # the error body for a result the queue refused
        self._hurry = hurry                  # shutting down: retry fast, the exit is near
        self._queues = [queue.Queue() for _ in range(POSTERS)]
        self._undelivered: list[Post] = []
        self._lock = threading.Lock()

    def start(self, stopping: threading.Event) -> None:
        for i, q in enumerate(self._queues):
            threading.Thread(target=self._poster, args=(q,), name=f"gpu-worker-poster-{i}",
                             daemon=True).start()

        def redeliver():
            while not stopping.wait(REDELIVER_EVERY):
                self.redeliver_once()
        threading.Thread(target=redeliver, name="gpu-worker-redeliver", daemon=True).start()

    def put(self, post: Post) -> None:
        self._queues[zlib.crc32(post.job_id.encode()) % POSTERS].put(post)

    def close(self, flush_s: float = 15.0) -> None:
        """Stop the posters once what they hold is posted; then a last redelivery."""
        for q in self._queues:
            q.put(None)
        flush_until = time.monotonic() + flush_s
        for q in self._queues:
            while q.unfinished_tasks and time.monotonic() < flush_until:
                time.sleep(0.05)
        self.redeliver_once(final=True)

    def _poster(self, q: queue.Queue) -> None:
        session = self._session()
        while True:
            post = q.get()
            try:
                if post is None:
                    return
                if not self.deliver(session, post) and post.kind == "done":
                    with self._lock:
                        self._undelivered.append(post)
                    log.error("result could not be delivered after %d tries; kept, and "
                              "retried every %gs", post.attempts, REDELIVER_EVERY,
                              extra={"job_id": post.job_id})
            finally:
                q.task_done()

    def deliver(self, session: requests.Session, post: Post,
                attempts: int = POST_ATTEMPTS) -> bool:
        backoff = Backoff(0.25, 4.0)
        for _ in range(attempts):
            post.attempts += 1
            try:
                resp = session.post(post.url, data=post.encoded(), timeout=POST_TIMEOUT, headers={
                    "Content-Type": "application/x-www-form-urlencoded", "charset": "utf-8"})
                if resp.status_code < 400:
                    return True
                if resp.status_code in (400, 413) and post.kind == "done" and not post.replaced:
                    # refused (too large for the platform?): report FAILED, not nothing
                    post.replace(self._refused_body(
                        f"the queue refused the result with HTTP {resp.status_code}: "
                        f"{resp.text[:200]}"))
                    continue
                if resp.status_code < 500 and resp.status_code != 429:
                    # the queue refused it for good: retrying cannot help
                    log.error("%s post refused: HTTP %d %s", post.kind, resp.status_code,
                              resp.text[:200], extra={"job_id": post.job_id})
                    return True
                problem = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
            wait = 0.1 if self._hurry() and attempts > 1 else backoff.next()
            log.warning("%s post failed (%s); retrying in %.2fs", post.kind, problem, wait,
                        extra={"job_id": post.job_id})
            time.sleep(wait)
        return False

    def redeliver_once(self, final: bool = False) -> None:
        with self._lock:
            pending, self._undelivered = self._undelivered, []
        if not pending:
            return
        session = self._session()
        for post in pending:
            if self.deliver(session, post, attempts=2 if final else 1):
                log.info("result delivered after %d tries", post.attempts,
                         extra={"job_id": post.job_id})
            else:
                with self._lock:
                    self._undelivered.append(post)
        if final:
            for post in self._undelivered:
                log.error("result NOT delivered before exit: %s",
                          post.encoded()[:2000].decode(errors="replace"),
                          extra={"job_id": post.job_id})
