"""Delivery of a RunPod worker's posts: progress, stream chunks and results.

Each job has a lane: its posts go in order (progress and chunks before the result), one at
a time, while other jobs' lanes are posted by other threads, so one job's retries never
hold back another job's result. A progress update waiting behind a post in flight is
replaced by a newer one (only the latest value matters); chunks waiting in a lane are
held within the stream bound (stream_bound.py: past it the oldest waiting go).
Connection errors, 5xx and 429 are retried with backoff; a result the queue refuses as
too large (400/413) becomes a FAILED error record rather than nothing; a result that
still cannot be delivered is kept and retried every REDELIVER_EVERY seconds until the
worker exits. A worker that is stopping keeps trying each result until close()'s flush
deadline (a queue that is away for a few seconds while the worker stops must not cost
the results it holds; the soak lost one so), waiting at most 0.5 s between tries.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

from .. import stream_bound
from ..backoff import Backoff

log = logging.getLogger("worker.runpod")
FLUSH_S = 15.0       # after the jobs are done: results are retried this long at most

POSTERS = 4                # posters whose posts go through: more only cost GIL time
MAX_POSTERS = 32           # with the ones stuck retrying: a slow lane never blocks the rest
POSTER_IDLE_S = 30.0       # a poster thread with nothing to do for this long ends
POST_TIMEOUT = (5.0, 60.0)
POST_ATTEMPTS = 5
REDELIVER_EVERY = 5.0


@dataclass
class Post:
    kind: str            # "done", "stream", "progress"
    job_id: str
    url: str
    body: Any
    data: bytes | None = None    # the body encoded, once
    attempts: int = 0
    replaced: bool = False   # a refused result was already replaced by an error record
    created: float = field(default_factory=time.monotonic)    # for a result: the job's end

    def encoded(self) -> bytes:
        if self.data is None:
            self.data = json.dumps(self.body, ensure_ascii=False).encode()
        return self.data

    def replace(self, body: dict) -> None:
        self.body, self.data, self.replaced = body, None, True


class Delivery:
    def __init__(self, session: Callable[[], requests.Session],
                 refused_body: Callable[[str], dict], hurry: Callable[[], bool], metrics,
                 chunk_bytes: int = stream_bound.CEILING_BYTES):
        self._metrics = metrics              # parent.metrics.Metrics: posts, bytes, times
        self._session = session              # a new session per thread
        self._refused_body = refused_body    # the error body for a result the queue refused
        self._hurry = hurry                  # shutting down: retry fast, the exit is near
        self._cond = threading.Condition()
        self._lanes: dict[str, collections.deque] = {}   # job id -> posts not yet started
        self._ready: collections.deque[str] = collections.deque()   # lanes with no poster
        self._posters = 0
        self._idle = 0
        self._retrying = 0        # posters in the retries of a failing post
        self._closing = False
        self._deadline: float | None = None     # close()'s flush deadline
        self._in_hand: list = []   # results a poster or a redelivery is trying now
        self._undelivered: list[Post] = []      # results that ran out of tries (under _cond)
        self._chunk_bytes = chunk_bytes
        self._waiting: dict[str, list] = {}  # job id -> [chunks in its lane, bytes, dropped]

    def start(self, stopping: threading.Event) -> None:
        def redeliver():
            while not stopping.wait(REDELIVER_EVERY):
                self.redeliver_once()
        threading.Thread(target=redeliver, name="gpu-worker-redeliver", daemon=True).start()

    def put(self, post: Post) -> None:
        size = len(post.encoded()) if post.kind == "stream" else 0
        first = False
        with self._cond:
            lane = self._lanes.get(post.job_id)
            if lane is None:
                lane = self._lanes[post.job_id] = collections.deque()
                self._ready.append(post.job_id)
            elif post.kind == "progress" and lane and lane[-1].kind == "progress":
                lane[-1].body, lane[-1].data = post.body, None    # coalesced: the latest wins
                return
            if post.kind == "stream":
                first = self._make_room(post.job_id, lane, size)
            if size <= self._chunk_bytes:
                lane.append(post)
            self._grow()
            self._cond.notify()
        if first:
            stream_bound.said(post.job_id, self._chunk_bytes)

    def _make_room(self, job_id: str, lane: collections.deque, size: int) -> bool:
        """Room in the lane for a chunk of `size` bytes within the stream bound: the oldest
        chunks waiting go (one alone past it is not kept). True on the job's first drop;
        call with the lock held."""
        held = self._waiting.setdefault(job_id, [0, 0, 0])
        before = held[2]
        if size > self._chunk_bytes:
            held[2] += 1
        else:
            while held[0] and (held[0] >= stream_bound.MAX_CHUNKS
                               or held[1] + size > self._chunk_bytes):
                i = next(i for i, p in enumerate(lane) if p.kind == "stream")
                self._unwait(job_id, lane[i])
                del lane[i]
                held[2] += 1
            held[0] += 1
            held[1] += size
        return before == 0 and held[2] > 0

    def _unwait(self, job_id: str, post: Post) -> None:
        """A chunk left its lane (posted or dropped); call with the lock held."""
        held = self._waiting[job_id]
        held[0] -= 1
        held[1] -= len(post.data)

    def _grow(self) -> None:
        """Another poster when lanes wait with no idle poster and fewer than POSTERS are
        making progress (the others retry); call with the lock held."""
        if (len(self._ready) > self._idle and self._posters - self._retrying < POSTERS
                and self._posters < MAX_POSTERS):
            self._posters += 1
            threading.Thread(target=self._poster, name="gpu-worker-poster",
                             daemon=True).start()

    def _retry_began(self) -> None:
        with self._cond:
            self._retrying += 1
            self._grow()

    def close(self, flush_s: float = FLUSH_S) -> None:
        """Post what is kept and every lane, each post tried until flush_s from now."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + flush_s
            self._cond.notify_all()
        self.redeliver_once(final=True)
        with self._cond:       # the lanes, and a redelivery the thread has in its hands
            self._cond.wait_for(lambda: not self._lanes and not self._in_hand,
                                max(0.0, self._deadline - time.monotonic()))
            left = list(self._undelivered) + self._in_hand + [
                post for lane in self._lanes.values() for post in lane if post.kind == "done"]
        for post in left:
            log.error("result NOT delivered before exit: %s",
                      post.encoded()[:2000].decode(errors="replace"),
                      extra={"job_id": post.job_id})

    def _keep_trying(self, post: Post) -> bool:
        """A result, while close()'s deadline is ahead (or, stopping, before close())."""
        if post.kind != "done":
            return False
        if self._deadline is not None:
            return time.monotonic() < self._deadline
        return self._hurry()

    def _timeout(self) -> tuple:
        """A post's (connect, read) timeouts, cut to close()'s deadline."""
        left = max(0.1, self._left())
        return min(POST_TIMEOUT[0], left), min(POST_TIMEOUT[1], left)

    def _left(self) -> float:
        """Seconds to close()'s deadline (a long way when there is none)."""
        return 3600.0 if self._deadline is None else self._deadline - time.monotonic()

    def _poster(self) -> None:
        session = self._session()
        try:
            while True:
                with self._cond:
                    while not self._ready:
                        if self._closing:
                            return
                        self._idle += 1
                        woken = self._cond.wait(POSTER_IDLE_S)
                        self._idle -= 1
                        if not woken and not self._ready:
                            return
                    job_id = self._ready.popleft()
                self._send_lane(session, job_id)
        finally:
            with self._cond:
                self._posters -= 1
            session.close()

    def _send_lane(self, session: requests.Session, job_id: str) -> None:
        """Post one job's lane in order until it is empty (this thread owns it till then)."""
        while True:
            with self._cond:
                lane = self._lanes[job_id]
                if not lane:
                    del self._lanes[job_id]
                    self._cond.notify_all()
                    return
                post = lane.popleft()
                if post.kind == "stream":
                    self._unwait(job_id, post)
                elif post.kind == "done":
                    self._waiting.pop(job_id, None)     # its last post: no chunk follows
                    self._in_hand.append(post)
            retried = False

            def retrying() -> None:       # once per post: this poster now counts as stuck
                nonlocal retried
                if not retried:
                    retried = True
                    self._retry_began()
            try:
                delivered = self.deliver(session, post, on_retry=retrying)
            except Exception:     # noqa: BLE001 - a post must never end its poster
                log.exception("%s post failed", post.kind, extra={"job_id": post.job_id})
                delivered = False
            with self._cond:
                self._retrying -= retried
                if post.kind == "done":
                    self._in_hand.remove(post)
                    if not delivered:
                        self._undelivered.append(post)
                closed = self._closing          # then close() names it, kept or in hand
            if not delivered and post.kind == "done":
                self._metrics.post(post.kind, "undelivered")
                if not closed:
                    log.error("result could not be delivered after %d tries; kept, and "
                              "retried every %gs", post.attempts, REDELIVER_EVERY,
                              extra={"job_id": post.job_id})

    def deliver(self, session: requests.Session, post: Post,
                attempts: int = POST_ATTEMPTS,
                on_retry: Callable[[], Any] = lambda: None) -> bool:
        backoff = Backoff(0.25, 4.0)
        metrics = self._metrics
        tries = 0
        while (tries < attempts or self._keep_trying(post)) and self._left() > 0:
            tries += 1
            post.attempts += 1
            try:
                data = post.encoded()
                metrics.bytes_out.inc(len(data))
                resp = session.post(post.url, data=data, timeout=self._timeout(), headers={
                    "Content-Type": "application/x-www-form-urlencoded", "charset": "utf-8"})
                if resp.status_code < 400:
                    self._delivered(post)
                    return True
                if resp.status_code in (400, 413) and post.kind == "done" and not post.replaced:
                    # refused (too large for the platform?): report FAILED, not nothing
                    metrics.post(post.kind, "refused")
                    post.replace(self._refused_body(
                        f"the queue refused the result with HTTP {resp.status_code}: "
                        f"{resp.text[:200]}"))
                    continue
                if resp.status_code < 500 and resp.status_code != 429:
                    # the queue refused it for good: retrying cannot help
                    metrics.post(post.kind, "refused")
                    log.error("%s post refused: HTTP %d %s", post.kind, resp.status_code,
                              resp.text[:200], extra={"job_id": post.job_id})
                    return True
                problem = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
            metrics.post(post.kind, "retry")
            on_retry()
            wait = min(0.5, backoff.next()) if self._hurry() else backoff.next()
            wait = max(0.0, min(wait, self._left()))
            log.warning("%s post failed (%s); retrying in %.2fs", post.kind, problem, wait,
                        extra={"job_id": post.job_id})
            time.sleep(wait)
        return False

    def _delivered(self, post: Post) -> None:
        self._metrics.post(post.kind, "delivered")
        if post.kind == "done":
            took = time.monotonic() - post.created
            self._metrics.delivered("runpod", took)
            log.info("result delivered in %d ms%s", took * 1000,
                     f" ({post.attempts} tries)" if post.attempts > 1 else "",
                     extra={"job_id": post.job_id})

    def redeliver_once(self, final: bool = False) -> None:
        with self._cond:
            if not self._undelivered:
                return
        session = self._session()      # first: a failure here leaves the results kept
        with self._cond:
            pending, self._undelivered = self._undelivered, []
            self._in_hand.extend(pending)
        for post in pending:
            try:
                delivered = self.deliver(session, post, attempts=2 if final else 1)
            except Exception:     # noqa: BLE001 - kept, and tried again
                log.exception("redelivery failed", extra={"job_id": post.job_id})
                delivered = False
            with self._cond:
                if not delivered:
                    self._undelivered.append(post)
                self._in_hand.remove(post)
                self._cond.notify_all()
            if delivered:
                log.info("result delivered after %d tries", post.attempts,
                         extra={"job_id": post.job_id})
