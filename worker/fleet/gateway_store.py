"""The gateway's side of an endpoint on Redis (asyncio): a job in, its record out. It
keeps nothing of its own, so any number of gateways can serve one endpoint."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

from ..jobs import JobState, error_record
from ..sources.job_store import new_job
from . import records
from .connect import QueueBusy
from .keys import GROUP, HOOK_GROUP, Keys
from .scripts import Scripts

WAIT_SLICE_S = 5.0           # a waiter reads its record at least this often
AWAY_RETRY_S = 1.0           # ... and each second while the queue cannot be reached
ALIVE_S = 10.0               # a worker seen this recently counts as alive
IDEM_QUEUED_S = 7 * 24 * 3600   # a key's life until its job ends; then the record's


class GatewayStore:
    def __init__(self, r, keys: Keys, result_ttl: float, endings):
        self.r, self.keys, self.endings = r, keys, endings
        self.ttl = max(1, int(result_ttl))
        self.scripts = Scripts(r)

    async def ensure_groups(self) -> None:
        import redis
        for stream, group in ((self.keys.stream, GROUP), (self.keys.hooks, HOOK_GROUP)):
            try:
                await self.r.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def submit(self, body: dict, raw: bytes, header_trace, idem: str | None) -> tuple:
        """Queue a checked body; (job id, True) or, for an idempotency key seen before,
        (that job's id, False)."""
        job, parts, _ = new_job(body, raw, header_trace)
        job_id = job["id"]
        data = b"".join(parts) if parts is not None else \
            json.dumps(job, ensure_ascii=False).encode()
        webhook = body.get("webhook") if isinstance(body.get("webhook"), str) else ""
        idem_key = self.keys.idem(idem) if idem else self.keys.idem("-")
        fresh, known = await self.scripts.submit(
            keys=[self.keys.job(job_id), self.keys.stream, idem_key],
            args=[job_id, data, webhook, "1" if idem else "0", IDEM_QUEUED_S])
        return known.decode(), bool(fresh)

    async def record(self, job_id: str) -> dict | None:
        rec = await self.r.hgetall(self.keys.job(job_id))
        return records.view(job_id, rec) if rec else None

    async def wait(self, job_id: str, timeout: float, fresh: bool = False) -> dict | None:
        """The record once the job has ended, or as it is after `timeout` seconds.
        Waiting holds no connection: the gateway's one subscription wakes it
        (endings.py). `fresh`: queued just now, so its record is first read once it has
        ended (an end before the waiter registered is remembered by the subscription);
        else it is read after the waiter is registered, and an end after that wakes it.
        A re-read that finds the queue away (an outage, a restart) does not end the wait:
        the waiter tries again each second until its time is up, then answers with the
        record as last read (the job is still there), or IN_QUEUE for a job this request
        queued; only a wait that never read its job otherwise fails (503)."""
        import redis
        deadline = time.monotonic() + timeout
        view, seen, queued = None, False, fresh
        with self.endings.watch(self.keys.ended, job_id) as ended:
            while True:
                slice_s = WAIT_SLICE_S
                if not fresh or ended.is_set():
                    ended.clear()
                    try:        # a stalled server holds a read no longer than the wait
                        view, seen = await asyncio.wait_for(self.record(job_id), max(
                            AWAY_RETRY_S, deadline - time.monotonic())), True
                    except (redis.ConnectionError, redis.TimeoutError, OSError, QueueBusy,
                            asyncio.TimeoutError) as exc:
                        if deadline - time.monotonic() <= 0 and not seen:
                            if queued:      # queued by this request: it says so
                                return {"id": job_id, "status": JobState.IN_QUEUE.value}
                            if isinstance(exc, asyncio.TimeoutError):
                                raise redis.TimeoutError("no answer within the wait") \
                                    from None
                            raise
                        slice_s = AWAY_RETRY_S
                    else:
                        if view is None or JobState(view["status"]).final:
                            return view
                fresh = False
                left = deadline - time.monotonic()
                if left <= 0:
                    return view
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ended.wait(), min(slice_s, left))

    async def drain_stream(self, job_id: str) -> dict | None:
        status, items, dropped = await self.scripts.drain_chunks(
            keys=[self.keys.chunks(job_id), self.keys.job(job_id)])
        if not status:
            return None
        out = {"id": job_id, "status": status.decode(),
               "stream": [{"output": json.loads(c)} for c in items]}
        if int(dropped):
            out["streamDropped"] = int(dropped)
        return out

    async def cancel(self, job_id: str, queued_only: bool = False) -> str:
        """The job's status after the cancel ('' when unknown; 'was:<state>' when it had
        ended before): a queued job ends CANCELLED here; a running one is stopped by its
        worker, which reports it."""
        k = self.keys
        final = records.final_body({"error": error_record(
            "Cancelled", "cancelled before it started", "", "gateway", "")}, 0)
        answer = await self.scripts.cancel(
            keys=[k.job(job_id), k.stream, k.hooks, k.ended, k.counts,
                  k.chunks(job_id)],
            args=[GROUP, final, self.ttl, "1" if queued_only else "0", job_id])
        return answer.decode()

    async def purge(self) -> int:
        """Cancel every job still queued; the number that ended CANCELLED."""
        removed, start = 0, "-"
        while True:
            batch = await self.r.xrange(self.keys.stream, start, "+", count=500)
            for entry, fields in batch:
                job_id = fields.get(b"id", b"").decode("utf-8", "replace")
                if job_id and await self.cancel(job_id, queued_only=True) == "CANCELLED":
                    removed += 1
            if len(batch) < 500:
                return removed
            start = "(" + batch[-1][0].decode()

    async def health(self) -> dict:
        k = self.keys
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        pipe.xinfo_groups(k.stream)
        pipe.hgetall(k.counts)
        pipe.zcount(k.workers, now_ms - int(ALIVE_S * 1000), "+inf")
        pipe.xlen(k.dead)
        pipe.xlen(k.hooks)
        pipe.zremrangebyscore(k.workers, 0, now_ms - 3600_000)
        pipe.xlen(k.stream)
        groups, counts, alive, dead, hooks, _, length = await pipe.execute(
            raise_on_error=False)
        if isinstance(groups, Exception):    # no stream yet (a server restarted empty)
            groups = []
        group = next((g for g in groups if g.get("name") in (GROUP, GROUP.encode())), {})
        pending = int(group.get("pending") or 0)
        lag = group.get("lag")
        if lag is None:          # unknown to the server: entries are deleted once acked
            lag = max(0, int(length) - pending)
        counts = {key.decode(): int(v) for key, v in counts.items()}
        return {
            "jobs": {"completed": counts.get("COMPLETED", 0),
                     "failed": counts.get("FAILED", 0) + counts.get("TIMED_OUT", 0),
                     "cancelled": counts.get("CANCELLED", 0),
                     "inProgress": pending, "inQueue": int(lag or 0), "retried": 0},
            "workers": {"alive": int(alive)},
            "queue": {"endpoint": k.endpoint, "depth": int(lag or 0) + pending,
                      "deadLetters": int(dead), "webhooksPending": int(hooks)},
        }
