"""Jobs from a Redis Streams endpoint (docs/fleet.md): at least once, one final record.

Threads, none of which runs user code:
- take: reclaims entries idle past the lease (a dead worker's), else reads new ones
  (XREADGROUP, as many as the free capacity); each becomes this run's (scripts.START: a
  fence, its delivery counted) and goes to the supervisor;
- keeper: this worker's heartbeat, and every held job's lease renewed (XCLAIM JUSTID) if
  this run still owns it — a lease taken over stops the run unreported (fencing), a
  cancel asked through the gateway stops it CANCELLED;
- writer (redis_writer.py): progress, chunks and final records, in order, retried;
- outbox (fleet/outbox.py): webhooks, at least once.
SIGTERM: no new reads; running jobs have WORKER_SHUTDOWN_GRACE, then what is still held
is released (queued again, visible to the next worker at once) and the child stopped.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .. import redaction, stream_bound
from ..backoff import Backoff
from ..config import Settings
from ..fleet import connect, records
from ..fleet.keys import DEAD_MAX, GROUP, RELEASED
from ..fleet.outbox import Outbox
from ..fleet.scripts import Scripts
from ..jobs import JobResult, JobState, Reason, failure
from ..jsonlimits import loads
from ..parent.supervisor import Supervisor
from ..version import __version__
from .queue_source import QueueSource
from .redis_chunks import Outgoing
from .redis_writer import Write, Writer

log = logging.getLogger("worker.queue")
RECLAIM_EVERY_S = 1.0
READ_BLOCK_MS = 1000
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000     # idle past any worker's lease: taken at once


def registered_name(target) -> str:
    """What the endpoint is registered with: the handler file with its folder (RunPod
    workers all call theirs handler.py), or the module; not its content (a new version
    joins without ceremony)."""
    path = getattr(target, "path", None)
    if path:
        return os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))),
                            os.path.basename(path))
    return target.describe()


@dataclass
class Held:
    job_id: str
    entry: bytes
    fence: str
    fenced: bool = False          # its lease went to another worker: nothing to report
    released: bool = False        # given back at shutdown: another worker runs it
    cancelling: bool = False      # a cancel came through the queue and was passed on
    out: Outgoing | None = None   # its progress and stream chunks on their way


class RedisQueueSource(QueueSource):
    log = log

    def __init__(self, settings: Settings, target, supervisor: Supervisor | None = None):
        import redis
        self.keys = connect.worker_keys(settings)
        self.transient = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.redis_error = redis.RedisError
        self.r = connect.client(settings)
        self.scripts = Scripts(self.r)
        self.target = target
        base = settings.worker_id or socket.gethostname()
        self.consumer = self.worker_name = f"{base}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        super().__init__(settings, target, supervisor)
        self.left = threading.Event()          # the shutdown is over
        self.held_jobs: dict[str, Held] = {}
        self.finishing: dict[str, Held] = {}   # ended; the final record on its way
        self.writer = Writer(self.transient, connect.refusal_passes)
        self.outbox = Outbox(self.r, self.keys, self.consumer, settings, self.sup.metrics,
                             self.transient, self.stopping)
        self._failing = Backoff(0.25, 2.0)      # one server, no rate limit: back soon
        self._cursor, self._last_reclaim = "0-0", 0.0

    @property
    def lease_ms(self) -> int:
        return int(self.settings.queue_lease_s * 1000)

    # --- running ---------------------------------------------------------------------------

    def signal_meaning(self) -> str:
        return (f"no new jobs; running jobs have {self.settings.shutdown_grace:g}s to "
                "finish, the rest are released to other workers")

    def prepare(self) -> bool:
        return self._register(redaction.url(self.settings.queue_url))

    def started(self) -> None:
        log.info("--- gpu-worker %s | endpoint %s on %s as %s ---", __version__,
                 self.keys.endpoint, redaction.url(self.settings.queue_url), self.consumer)
        self.writer.start()
        self.outbox.start()
        self.thread(self._keeper, "queue-keeper")

    def _register(self, where: str) -> bool:
        """Reach the server (waiting while it is down), check it, make the groups, and
        register this handler for the endpoint, or refuse a different one."""
        backoff = Backoff(0.5, 5.0)
        handler = registered_name(self.target)
        while not self.stopping.is_set():
            try:
                connect.check_server(self.r)
                connect.ensure_groups(self.r, self.keys)
                self.r.hsetnx(self.keys.meta, "handler", handler)
                self.r.zadd(self.keys.workers, {self.consumer: int(time.time() * 1000)})
                known = (self.r.hget(self.keys.meta, "handler") or b"").decode()
                break
            except self.transient as exc:
                wait = backoff.next()
                log.warning("the queue at %s cannot be reached (%s); trying again in "
                            "%.1fs", where, type(exc).__name__, wait)
                self.stopping.wait(wait)
        else:
            return False
        if known != handler:
            log.critical("endpoint %r was registered with the handler %r; this worker runs "
                         "%r and is refused (use another WORKER_ENDPOINT, or delete the key "
                         "%s once no worker of the old handler is left)", self.keys.endpoint,
                         known, handler, self.keys.meta)
            return False
        return True

    def release_rest(self) -> None:
        with self._cond:
            left = [h for h in self.held_jobs.values() if not h.released]
        for held in left:
            self._release(held)

    def close(self, failed: bool) -> int:
        grace = self.settings.stop_grace     # 0.5 s past the budget: a write saves a rerun
        unwritten = self.writer.close(max(0.5, self.host.budget_left(max(5.0, 2 * grace))))
        if unwritten:
            log.error("%d write(s) could not reach the queue before the exit; their jobs run "
                      "again once their lease runs out", unwritten)
        self.outbox.close()
        self.left.set()
        self._leave()
        log.info("stopped")
        return 1 if failed else 0

    def _release(self, held: Held) -> None:
        held.released = True
        try:
            done = self.scripts.release(
                keys=[self.keys.job(held.job_id), self.keys.stream],
                args=[GROUP, held.entry, held.fence, RELEASED_IDLE_MS, RELEASED])
            log.info("released to another worker" if done else "not released: another "
                     "worker holds it already", extra={"job_id": held.job_id})
        except self.redis_error as exc:
            log.warning("could not release (%s); it runs again once its lease runs out",
                        exc, extra={"job_id": held.job_id})

    def _leave(self) -> None:
        try:
            self.r.zrem(self.keys.workers, self.consumer)
            mine = self.r.xpending_range(self.keys.stream, GROUP, "-", "+", 1,
                                         consumername=self.consumer)
            if not mine:
                self.r.xgroup_delconsumer(self.keys.stream, GROUP, self.consumer)
        except self.redis_error:
            pass

    # --- taking jobs -----------------------------------------------------------------------

    def held(self) -> int:
        return len(self.held_jobs)

    def take(self, room: int) -> bool:
        try:
            entries = []
            if time.monotonic() - self._last_reclaim >= RECLAIM_EVERY_S:
                self._last_reclaim = time.monotonic()
                self._cursor, entries = self._reclaim(self._cursor, room)
            if not entries:
                answer = self.r.xreadgroup(GROUP, self.consumer, {self.keys.stream: ">"},
                                           count=room, block=READ_BLOCK_MS)
                entries = answer[0][1] if answer else []
        except self.transient as exc:
            wait = self._failing.next()
            log.warning("reading the queue failed (%s); again in %.1fs", exc, wait)
            self.stopping.wait(wait)
            return True
        except self.redis_error as exc:
            if "NOGROUP" in str(exc):
                log.warning("the consumer groups are gone (a server restarted without "
                            "persistence?); making them again")
                self._guarded(connect.ensure_groups, self.r, self.keys)
            else:
                log.error("reading the queue failed: %s", exc)
                self.stopping.wait(self._failing.next())
            return True
        self._failing.reset()
        for entry, fields in entries:
            self._guarded(self._take_entry, entry, fields)
        return True

    def _reclaim(self, cursor: str, room: int) -> tuple:
        """Entries idle past the lease (a worker died or was cut off), taken over."""
        answer = self.r.xautoclaim(self.keys.stream, GROUP, self.consumer, self.lease_ms,
                                   cursor, count=room)
        nxt = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        return nxt, [e for e in answer[1] if e and e[1] is not None]

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except self.transient as exc:
            log.warning("the queue could not be reached (%s); the entry stays pending and "
                        "comes back after the lease", exc)
        except Exception:           # noqa: BLE001 - one strange entry must not end the loop
            log.exception("an entry of the queue could not be taken; it comes back after "
                          "the lease")

    def _take_entry(self, entry: bytes, fields: dict) -> None:
        raw_id, raw = fields.get(b"id"), fields.get(b"job")
        if raw_id is None or raw is None:
            log.error("the stream holds an entry that is not a job (no id or job field): "
                      "%.200r; deleted", fields)
            self.r.xack(self.keys.stream, GROUP, entry)
            self.r.xdel(self.keys.stream, entry)
            return
        job_id = raw_id.decode("utf-8", "replace")
        with self._cond:
            if job_id in self.held_jobs or job_id in self.finishing:
                # This worker stalled past its lease and its own reclaim took the entry back:
                # the run (or its final write) keeps its fence; no delivery is counted.
                return
        kind, fence, n, age_ms, last = self._start(job_id, entry)
        if kind in ("gone", "final"):
            log.info("an entry whose job has ended (or expired) came back; acknowledged",
                     extra={"job_id": job_id})
            return
        held = Held(job_id, entry, fence)
        if self.stopping.is_set():
            self._release(held)
            return
        if kind == "dead":
            self._finish(held, failure(
                job_id, JobState.FAILED, Reason.WORKER_LOST, "DeliveryLimit",
                f"the job was delivered {n} times (WORKER_QUEUE_MAX_DELIVERIES="
                f"{self.settings.queue_max_deliveries}) and no run reported: each worker "
                f"that took it stopped or lost its lease (last: {last or 'unknown'}). It "
                "is in the dead-letter stream.", self.consumer, self.settings.hostname),
                dead=raw)
            return
        if kind == "cancel":
            self._finish(held, failure(job_id, JobState.CANCELLED, Reason.CANCELLED,
                                       "Cancelled", "cancelled before it started",
                                       self.consumer, self.settings.hostname))
            return
        with self._cond:
            self.held_jobs[job_id] = held
        if n > 1:
            log.warning("delivery %d of this job (its last worker %s stopped or lost its "
                        "lease)", n, last or "unknown", extra={"job_id": job_id})
        self._submit(held, raw, age_ms)

    def _start(self, job_id: str, entry: bytes) -> tuple:
        answer = self.scripts.start(keys=[self.keys.job(job_id), self.keys.stream],
                                    args=[GROUP, entry, self.consumer,
                                          self.settings.queue_max_deliveries])
        kind = answer[0].decode()
        if kind in ("gone", "final"):
            return kind, "", 0, 0, ""
        return kind, answer[1].decode(), int(answer[2]), int(answer[3]), answer[4].decode()

    def _submit(self, held: Held, raw: bytes, age_ms: int) -> None:
        try:
            job = loads(raw, "the job")
            if not isinstance(job, dict) or job.get("id") != held.job_id:
                raise ValueError("the job's JSON is not an object with the entry's id")
        except Exception as exc:       # noqa: BLE001 - JSONRefused, a strange entry...
            self.on_result(self.refused(held.job_id, f"the worker could not read this job: "
                                                     f"{exc}"[:1000]))
            return
        self.submit(held.job_id, job, raw, age=age_ms / 1000.0)

    # --- the job's events (supervisor thread: only queue work) ---------------------------

    def _outgoing(self, held: Held) -> Outgoing:
        """The job's progress and chunks on their way (made on the first of them)."""
        if held.out is None:
            job, chunks, limit = self.keys.job(held.job_id), self.keys.chunks(held.job_id), \
                stream_bound.max_bytes(self.settings.max_result_mb)
            held.out = Outgoing(held.job_id, limit, lambda seq, items, dropped: self.scripts.chunk(
                keys=[job, chunks], args=[held.fence, stream_bound.MAX_CHUNKS, limit,
                                          dropped, seq, *items]),
                lambda data: self.scripts.progress(keys=[job], args=[held.fence, data]))
        return held.out

    def on_progress(self, job_id: str, value: Any) -> None:
        held = self.held_jobs.get(job_id)       # a dict read: atomic
        if held is not None and self._outgoing(held).progress(value):
            self.writer.put(Write(job_id, "progress", held.out.flush_progress))

    def on_chunk(self, job_id: str, value: Any) -> None:
        held = self.held_jobs.get(job_id)
        if held is not None and self._outgoing(held).add(value):
            self.writer.put(Write(job_id, "chunk", held.out.flush))

    def on_result(self, result: JobResult) -> None:
        with self._cond:        # in one step: an own reclaim never finds it in neither
            held = self.held_jobs.pop(result.job_id, None)
            if held is not None and not (held.released or held.fenced):
                self.finishing[result.job_id] = held
            self._cond.notify_all()
        if held is None or held.released:
            return
        if held.fenced:
            log.warning("this run's lease went to another worker: its result is not "
                        "reported (the other run's is)", extra={"job_id": result.job_id})
            return
        self._finish(held, result)

    def _finish(self, held: Held, result: JobResult, dead: bytes = b"") -> None:
        final = records.fitted(result, self.settings.max_result_mb, self.consumer,
                               self.settings.hostname)
        k = self.keys
        with self._cond:        # its lease is kept until the final record is written
            self.finishing[held.job_id] = held
        text = ""
        if dead:
            text = str(result.body.get("error", ""))

        def call():
            return self.scripts.finish(
                keys=[k.job(held.job_id), k.stream, k.hooks, k.ended, k.counts,
                      k.chunks(held.job_id), k.dead],
                args=[GROUP, held.entry, held.fence, result.state.value, final,
                      max(1, int(self.settings.result_ttl)), held.job_id, dead, text,
                      DEAD_MAX])

        def done(answer):
            with self._cond:
                self.finishing.pop(held.job_id, None)
            answer = answer.decode() if isinstance(answer, bytes) else answer
            if answer == "fenced":
                log.warning("not reported: another worker took this job over (its run "
                            "reports)", extra={"job_id": held.job_id})
            elif answer == "final":
                log.info("not reported: the job already has its final record",
                         extra={"job_id": held.job_id})
            elif dead and answer == "ok":
                log.error("moved to the dead-letter stream %s", k.dead,
                          extra={"job_id": held.job_id})
        self.writer.put(Write(held.job_id, "final", call, done))

    # --- leases, cancels, heartbeat ----------------------------------------------------------

    def _keeper(self) -> None:
        """Renews while any job is held, through the shutdown's grace too (its own clock:
        waiting on `stopping` would return at once once set, and spin)."""
        every = min(0.5, self.settings.queue_lease_s / 3)
        while not self.left.wait(every):
            if self.stopping.is_set() and self.taking_done.is_set() and \
                    not (self.held_jobs or self.finishing):
                return
            try:
                self._keep()
            except self.redis_error as exc:
                log.debug("lease renewal failed: %s", exc)

    def _keep(self) -> None:
        k = self.keys
        with self._cond:
            held = [h for h in (*self.held_jobs.values(), *self.finishing.values())
                    if not (h.released or h.fenced)]
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(k.workers, {self.consumer: int(time.time() * 1000)})
        for h in held:
            self.scripts.renew(keys=[k.job(h.job_id), k.stream],
                               args=[GROUP, self.consumer, h.entry, h.fence], client=pipe)
        answers = pipe.execute()[1:]
        for h, answer in zip(held, answers):
            if answer == 0 and not h.fenced:
                h.fenced = True
                log.warning("this worker lost the job's lease to another worker (it was "
                            "cut off for longer than WORKER_QUEUE_LEASE_S); stopping its run",
                            extra={"job_id": h.job_id})
                self.sup.cancel(h.job_id)
            elif answer == 3 and not h.cancelling:
                h.cancelling = True
                log.info("cancel asked through the queue", extra={"job_id": h.job_id})
                self.sup.cancel(h.job_id)
