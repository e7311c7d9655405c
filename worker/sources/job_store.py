"""The local API's in-memory queue: job records in the cloud's shapes, in front of the
supervisor.

Records are written from the supervisor's thread (events) and read from the server's event
loop, under one lock. Finished records expire after WORKER_RESULT_TTL seconds.
"""
from __future__ import annotations

import asyncio
import collections
import http.client
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import backoff, redaction, stream_bound, tracing
from ..jobs import JobResult, JobState, error_record
from ..parent.supervisor import ChildState, JobListener, Supervisor, WorkerState
from . import webhook_post

log = logging.getLogger("worker.api")
JOB_KEYS = ("input", "webhook", "policy", "s3Config", "traceparent")
WEBHOOK_SENDERS = 16             # webhooks in flight at once, each for its own job
WEBHOOK_TRIES = 4
PURGE_WAIT_S = 5.0               # /purge-queue waits this long at most for the cancels


def spliced(raw: bytes, job_id: str, trace: str | None) -> tuple | None:
    """The body as received, as parts that join to it with our id (and a traceparent)
    added in front, or None when it does not start as an object."""
    head = raw.lstrip()
    if head[:1] != b"{":
        return None
    front = b'{"id":%s,' % json.dumps(job_id).encode()
    if trace is not None:
        front += b'"traceparent":%s,' % json.dumps(trace).encode()
    return front, memoryview(head)[1:]


def new_job(body: dict, raw: bytes | None, header_trace: Any) -> tuple:
    """A request body as a job with a new id: (job, its exact JSON as parts of the body
    as received or None, its traceparent). Only the keys a job carries; the body's own
    traceparent wins over the request header's; an invalid one is ignored. The parts are
    given when the body holds nothing else, so it need not be encoded again."""
    job = {k: v for k, v in body.items() if k in JOB_KEYS}
    own = tracing.valid(body.get("traceparent"))
    trace = own or tracing.valid(header_trace)
    plain = len(job) == len(body) and ("traceparent" not in body or own)
    job.pop("traceparent", None)
    if trace:
        job["traceparent"] = trace
    job["id"] = str(uuid.uuid4())
    forward = spliced(raw, job["id"], trace if trace and not own else None) \
        if raw is not None and plain else None
    return job, forward, trace


class QueueFull(Exception):
    """The local queue holds WORKER_API_QUEUE_JOBS jobs or WORKER_API_QUEUE_MB of bodies."""


@dataclass
class Record:
    id: str
    webhook: str | None
    created: float = field(default_factory=time.monotonic)
    status: JobState = JobState.IN_QUEUE
    started: float | None = None
    finished: float | None = None
    progress: str | None = None    # the latest progress update's JSON, while it runs
    unread: stream_bound.Unread | None = None    # its chunks' JSON, not yet read (/stream)
    result: JobResult | None = None
    done: asyncio.Event | None = None
    size: int = 0                  # bytes of its body while it waits in the queue
    trace: str | None = None       # its W3C traceparent (body, else the request's header)
    delivery_ms: int | None = None     # its webhook, once delivered
    held: int = 0                  # bytes of its result's JSON, once finished
    said: bool = False             # a progress update too large for it was logged

    def view(self, worker_id: str) -> dict:
        """The cloud's /status shape."""
        out: dict = {"id": self.id, "status": self.status.value}
        if self.started is not None:
            out["delayTime"] = int((self.started - self.created) * 1000)
        if self.result is not None:
            out.update(self.result.times())
            if self.delivery_ms is not None:
                out["deliveryTime"] = self.delivery_ms
            out.update(self.result.body)
        elif self.status is JobState.IN_PROGRESS and self.progress is not None:
            out["output"] = json.loads(self.progress)
        if self.unread is not None and self.unread.dropped:
            out["streamDropped"] = self.unread.dropped
        if worker_id:
            out["workerId"] = worker_id
        return out


@dataclass(frozen=True)
class Hook:
    """What sending a job's webhook needs of its record."""
    id: str
    url: str
    trace: str | None
    finished: float


class JobStore(JobListener):
    def __init__(self, supervisor: Supervisor, loop: asyncio.AbstractEventLoop,
                 ttl: float, worker_id: str = "", max_jobs: int = 0, max_bytes: int = 0,
                 capacity: Callable[[], int] | None = None, webhooks: Any = None,
                 chunk_bytes: int = stream_bound.CEILING_BYTES, max_result_mb: float = 0):
        self.sup = supervisor
        self.loop = loop
        self.ttl = ttl
        self.worker_id = worker_id
        self.max_jobs, self.max_bytes = max_jobs, max_bytes     # 0: no bound
        self.chunk_bytes = chunk_bytes     # a job's chunks held unread; a progress update
        self.max_result_mb = max_result_mb     # a larger result is FAILED (0: no limit)
        self.finished: collections.deque = collections.deque()   # in the order they ended
        self.held_bytes = 0                # of finished results; past max_bytes the oldest go
        self.webhook_bytes = 0             # of webhook bodies waiting or being sent
        self.records: dict[str, Record] = {}
        self.lock = threading.Lock()
        self.moved = threading.Condition(self.lock)   # a record started or ended
        self.counts = {"completed": 0, "failed": 0}
        self.capacity = capacity       # load balancing: jobs the child takes now; no queue
        self.active = 0                # jobs submitted and not ended
        self.queued = 0                # jobs waiting, and the bytes of their bodies
        self.queued_bytes = 0
        self._webhooks = ThreadPoolExecutor(WEBHOOK_SENDERS, "gpu-worker-webhook")
        self._sending: set = set()     # ids of the jobs whose webhook waits or is tried
        self._policy = webhooks          # webhook_post.Policy: addresses, deadline, proxy

    # --- called from the server's loop ---------------------------------------------------

    def submit(self, body: dict, raw: bytes | None = None, header_trace: Any = None) -> Record:
        """Queue a request body ({"input", ...}), checked by the caller. `raw` is the body
        as received: when it holds only the keys a job carries, the child gets it with our
        id (and the request's traceparent) spliced in, without re-encoding (a large input
        costs one parse, not a parse and an encode), and the parsed input is not kept: each
        job is held once. The body's own traceparent wins over the header's; an invalid
        one is ignored. Raises QueueFull past the queue's bounds."""
        job, forward, trace = new_job(body, raw, header_trace)
        if forward is not None:
            job["input"] = None     # it travels in `forward`; the parent never reads it
        size = len(raw) if raw is not None else 0
        self.sup.metrics.bytes_in.inc(size)
        webhook = body.get("webhook") if isinstance(body.get("webhook"), str) else None
        rec = Record(job["id"], webhook, done=asyncio.Event(), size=size, trace=trace)
        with self.lock:
            if self.capacity is not None and self.active + 1 > self.capacity():
                raise QueueFull(f"the worker is at capacity ({self.active} jobs running) "
                                "and keeps no queue (load-balancing mode); retry later")
            if self.max_jobs and self.queued + 1 > self.max_jobs:
                raise QueueFull(f"the queue is full ({self.queued} jobs waiting; "
                                "WORKER_API_QUEUE_JOBS); retry later")
            if self.max_bytes and self.queued and self.queued_bytes + size > self.max_bytes:
                raise QueueFull(f"the queue is full ({self.queued_bytes / 2**20:.1f} MiB "
                                "waiting; WORKER_API_QUEUE_MB); retry later")
            self.records[rec.id] = rec
            self.active += 1
            self.queued += 1
            self.queued_bytes += size
        self.sup.submit(job, self, forward)
        return rec

    def _dequeued(self, rec: Record) -> None:
        """The record left the queue (started or ended); call with the lock held."""
        if rec.size >= 0:
            self.queued -= 1
            self.queued_bytes -= rec.size
            rec.size = -1

    def get(self, job_id: str) -> Record | None:
        with self.lock:
            return self.records.get(job_id)

    def view(self, rec: Record) -> dict:
        with self.lock:
            return rec.view(self.worker_id)

    def drain_stream(self, rec: Record) -> bytes:
        """The /stream answer's JSON: chunks produced since the last call, and the status
        (and how many chunks were dropped unread, once there are any). Chunks are held as
        their JSON text (a decoded one can take 20 times the memory) and answered as is."""
        with self.lock:
            unread = rec.unread
            drained = unread.bytes if unread is not None else 0
            chunks = unread.drain() if unread is not None else []
            if rec.finished is not None and drained:   # a finished record holds less now
                rec.held -= drained
                self.held_bytes -= drained
            head = {"id": rec.id, "status": rec.status.value}
            if unread is not None and unread.dropped:
                head["streamDropped"] = unread.dropped
        parts = ",".join(f'{{"output":{c}}}' for c in chunks)
        return f'{json.dumps(head, ensure_ascii=False)[:-1]},"stream":[{parts}]}}'.encode()

    async def wait(self, rec: Record, timeout: float) -> dict:
        try:
            await asyncio.wait_for(rec.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.view(rec)

    def cancel(self, rec: Record) -> None:
        self.sup.cancel(rec.id)

    def purge(self) -> int:
        """Cancel every queued job and answer once each has ended or started (blocking, up
        to PURGE_WAIT_S): the count is of jobs that did end CANCELLED, so /status and
        /health agree with it the moment it is given. A job that started meanwhile runs on
        and is not counted."""
        with self.lock:
            queued = [r for r in self.records.values() if r.status is JobState.IN_QUEUE]
        for rec in queued:
            self.sup.cancel(rec.id, queued_only=True)
        with self.moved:
            self.moved.wait_for(lambda: all(r.status is not JobState.IN_QUEUE
                                            for r in queued), PURGE_WAIT_S)
            return sum(r.status is JobState.CANCELLED for r in queued)

    def health(self) -> dict:
        with self.lock:
            in_queue = sum(r.status is JobState.IN_QUEUE for r in self.records.values())
            running = sum(r.status is JobState.IN_PROGRESS for r in self.records.values())
            counts = dict(self.counts)
        snap = self.sup.snapshot()
        status = self.sup.status
        up = status.state is WorkerState.RUNNING
        states = [c.state for c in status.children]
        return {
            "jobs": {"completed": counts["completed"], "failed": counts["failed"],
                     "inProgress": running, "inQueue": in_queue, "retried": 0},
            "workers": {"idle": sum(s is ChildState.READY for s in states) if up else 0,
                        "running": sum(s is ChildState.BUSY for s in states) if up else 0,
                        "unhealthy": sum(c.out is not None for c in status.children)
                        if up else len(states)},
            "worker": snap,
        }

    def sweep(self) -> int:
        """Drop finished records older than the TTL (they expire in the order they ended)."""
        now = time.monotonic()
        with self.lock:
            return self._drop_finished(lambda rec: now - rec.finished > self.ttl)

    def _drop_finished(self, drop: Callable[[Record], bool]) -> int:
        """Drop the oldest finished records while `drop` says so; call with the lock held."""
        dropped = 0
        while self.finished and drop(self.finished[0]):
            rec = self.finished.popleft()
            self.held_bytes -= rec.held
            if self.records.get(rec.id) is rec:
                del self.records[rec.id]
                dropped += 1
        return dropped

    def _fit(self, result: JobResult) -> int:
        """The bytes of the result's JSON; over WORKER_MAX_RESULT_MB the result becomes a
        FAILED error record (as every source reports it), never kept whole."""
        limit, kind = self.max_result_mb, ""
        try:
            size = stream_bound.nbytes(stream_bound.encode(result.body))
        except Exception as exc:    # noqa: BLE001 - a peer's bytes (a lone surrogate): never
            kind, text = "ResultUnencodable", (f"the job's result could not be encoded: "
                                               f"{type(exc).__name__}: {exc}"[:1000])
        else:
            if limit and size > limit * 2**20:
                kind, text = "ResultTooLarge", stream_bound.too_large(size, limit)
        if kind:                    # the record ends FAILED with why, never unfinished
            log.error(text, extra={"job_id": result.job_id})
            settings = self.sup.settings
            result.state = JobState.FAILED
            result.body = {"error": error_record(kind, text, "", settings.worker_id,
                                                 settings.hostname)}
            size = stream_bound.nbytes(stream_bound.encode(result.body))
        return size

    # --- supervisor events (its thread) --------------------------------------------------

    def on_start(self, job_id: str) -> None:
        with self.lock:
            rec = self.records.get(job_id)
            if rec is not None:
                rec.status, rec.started = JobState.IN_PROGRESS, time.monotonic()
                self._dequeued(rec)
                self.moved.notify_all()

    def on_progress(self, job_id: str, value: Any) -> None:
        text = stream_bound.encode(value)
        with self.lock:
            rec = self.records.get(job_id)
            if rec is None:
                return
            if stream_bound.nbytes(text) <= self.chunk_bytes:
                rec.progress = text
                return
            said, rec.said = rec.said, True
        if not said:
            log.warning("a progress update of %.1f MiB is over WORKER_MAX_RESULT_MB: not "
                        "kept (the last one that fit is shown)", stream_bound.nbytes(text) / 2**20,
                        extra={"job_id": job_id})

    def on_chunk(self, job_id: str, value: Any) -> None:
        text = stream_bound.encode(value)
        with self.lock:
            rec = self.records.get(job_id)
            if rec is None:
                return
            if rec.unread is None:
                rec.unread = stream_bound.Unread(self.chunk_bytes)
            first = rec.unread.add(text, stream_bound.nbytes(text))
        if first:
            stream_bound.said(job_id, self.chunk_bytes)

    def on_result(self, result: JobResult) -> None:
        size = self._fit(result)
        with self.lock:
            rec = self.records.get(result.job_id)
            if rec is None:
                return
            self._dequeued(rec)
            if rec.finished is None:
                self.active -= 1
                self.finished.append(rec)
            size += rec.unread.bytes if rec.unread is not None else 0    # its unread chunks
            self.held_bytes += size - rec.held
            rec.progress, rec.held = None, size
            rec.status, rec.result, rec.finished = result.state, result, time.monotonic()
            evicted = self._drop_finished(lambda old: old is not rec and self.max_bytes
                                          and self.held_bytes > self.max_bytes)
            self.moved.notify_all()
            if result.state is JobState.COMPLETED:
                self.counts["completed"] += 1
            elif result.state in (JobState.FAILED, JobState.TIMED_OUT):
                self.counts["failed"] += 1
            payload = rec.view(self.worker_id) if rec.webhook else None
        if evicted:
            log.warning("%d finished record(s) dropped before WORKER_RESULT_TTL: the results "
                        "held reached WORKER_API_QUEUE_MB (%.0f MiB)", evicted,
                        self.max_bytes / 2**20)
        try:
            self.loop.call_soon_threadsafe(rec.done.set)
        except RuntimeError:
            pass          # the server's loop has closed: nobody waits any more
        if payload is not None:
            self._queue_webhook(rec, payload)

    def _queue_webhook(self, rec: Record, payload: dict) -> None:
        """Queue its webhook, its body encoded once; the bodies waiting are bounded by
        WORKER_API_QUEUE_MB too (receivers that never answer must not hold every result
        the records let go of): past it the webhook is not sent, and the log says so."""
        data = json.dumps(payload, ensure_ascii=False).encode()
        with self.lock:
            full = self.max_bytes and self.webhook_bytes + len(data) > self.max_bytes
            if not full:
                self.webhook_bytes += len(data)
                self._sending.add(rec.id)
        if full:
            self.sup.metrics.post("webhook", "undelivered")
            log.error("webhook %s not sent: %.0f MiB of webhooks wait already for receivers "
                      "that are slow to answer (WORKER_API_QUEUE_MB)", redaction.url(
                          rec.webhook), self.webhook_bytes / 2**20, extra={"job_id": rec.id})
            return
        try:
            hook = Hook(rec.id, rec.webhook, rec.trace, rec.finished)   # not the record: its
            self._webhooks.submit(self._send_webhook, hook, data)      # result may go first
        except RuntimeError:
            with self.lock:
                self.webhook_bytes -= len(data)
                self._sending.discard(rec.id)
            log.error("webhook %s not sent: the worker is shutting down",
                      redaction.url(rec.webhook), extra={"job_id": rec.id})

    # --- webhooks --------------------------------------------------------------------------

    def close(self, deadline: float | None) -> bool:
        """No new webhook; the ones on their way get until `deadline` (the stop's budget;
        None: as long as they take). False if some were left: the log names their jobs."""
        self._webhooks.shutdown(wait=False)
        while deadline is not None and self._sending:
            if time.monotonic() >= deadline:
                with self.lock:
                    ids = sorted(self._sending)
                log.error("webhooks still trying at the end of the stop's budget are not "
                          "delivered: %s", ", ".join(ids))
                return False
            time.sleep(0.05)
        return True

    def _send_webhook(self, hook: Hook, data: bytes) -> None:
        """One job's webhook, tried WEBHOOK_TRIES times; in a pool, so a receiver that never
        answers holds up only its own job's webhook. It carries the job's traceparent."""
        try:
            self._post_webhook(hook, data)
        except Exception:    # noqa: BLE001 - the pool would swallow it without a word
            self.sup.metrics.post("webhook", "undelivered")
            log.exception("webhook %s not sent", redaction.url(hook.url),
                          extra={"job_id": hook.id})
        finally:
            with self.lock:
                self.webhook_bytes -= len(data)
                self._sending.discard(hook.id)

    def _post_webhook(self, hook: Hook, data: bytes) -> None:
        url, metrics = hook.url, self.sup.metrics
        shown = redaction.url(url)          # what the log says: no credential
        headers = {"Content-Type": "application/json"}
        if hook.trace:
            headers["traceparent"] = hook.trace
        for attempt in range(WEBHOOK_TRIES):
            try:
                status = webhook_post.post(url, data, headers, self._policy)
                metrics.bytes_out.inc(len(data))
                if status < 500:
                    if status >= 400:
                        metrics.post("webhook", "refused")
                        log.warning("webhook %s refused: HTTP %d", shown, status,
                                    extra={"job_id": hook.id})
                        return
                    took = time.monotonic() - hook.finished
                    with self.lock:      # the record, unless it has gone meanwhile
                        rec = self.records.get(hook.id)
                        if rec is not None:
                            rec.delivery_ms = int(took * 1000)
                    metrics.post("webhook", "delivered")
                    metrics.delivered("webhook", took)
                    log.info("webhook delivered in %d ms (%d tries)", took * 1000,
                             attempt + 1, extra={"job_id": hook.id})
                    return
            except webhook_post.WebhookRefused as exc:
                metrics.post("webhook", "refused")
                log.warning("webhook %s not sent: %s", shown, exc, extra={"job_id": hook.id})
                return
            except (OSError, http.client.HTTPException) as exc:
                log.warning("webhook %s failed: %s: %s", shown, type(exc).__name__, exc,
                            extra={"job_id": hook.id})
            if attempt + 1 < WEBHOOK_TRIES:
                metrics.post("webhook", "retry")
                time.sleep(backoff.delay(attempt + 1, 0.5))
        metrics.post("webhook", "undelivered")
        log.error("webhook %s not delivered after %d tries", shown, WEBHOOK_TRIES,
                  extra={"job_id": hook.id})
