"""Webhooks from the endpoint's outbox stream, at least once.

A final record and its webhook's outbox entry are written in one step (scripts.FINISH), so
a worker that dies after storing a record loses no webhook: its pending outbox entries are
reclaimed by another worker's sender once the lease runs out. Each entry is tried
WEBHOOK_TRIES times through webhook_post (its deadline, size cap and address policy), then
acknowledged and deleted, delivered or not; a receiver may see a webhook twice (a sender
that died after the post and before the acknowledgement).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .. import backoff, redaction
from ..config import Settings
from ..sources import webhook_post
from . import records
from .keys import HOOK_GROUP, Keys

log = logging.getLogger("worker.queue")
SENDERS = 8
TRIES = 4


class Outbox:
    def __init__(self, r, keys: Keys, consumer: str, settings: Settings, metrics,
                 transient: tuple, stopping: threading.Event):
        self.r, self.keys, self.consumer = r, keys, consumer
        self.metrics, self.transient, self.stopping = metrics, transient, stopping
        # The gateway takes webhooks from any client: private addresses are refused unless
        # allowed (WORKER_WEBHOOK_ALLOW), wherever the worker itself listens.
        self.policy = webhook_post.Policy(settings, exposed=True)
        self.lease_ms = int(settings.queue_lease_s * 1000)
        self.pool = ThreadPoolExecutor(SENDERS, "gpu-worker-webhook")
        self.busy = threading.Semaphore(SENDERS)
        self.thread = threading.Thread(target=self._run, name="gpu-worker-outbox",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        cursor = "0-0"
        last_reclaim = 0.0
        while not self.stopping.is_set():
            try:
                entries = []
                if time.monotonic() - last_reclaim > 1.0:
                    last_reclaim = time.monotonic()
                    answer = self.r.xautoclaim(self.keys.hooks, HOOK_GROUP, self.consumer,
                                               self.lease_ms, cursor, count=SENDERS)
                    cursor = answer[0].decode() if isinstance(answer[0], bytes) else "0-0"
                    entries = [e for e in answer[1] if e and e[1] is not None]
                if not entries:
                    answer = self.r.xreadgroup(HOOK_GROUP, self.consumer,
                                               {self.keys.hooks: ">"}, count=SENDERS,
                                               block=1000)
                    entries = answer[0][1] if answer else []
            except Exception as exc:      # noqa: BLE001 - an outage, a lost group: go on
                if "NOGROUP" in str(exc):
                    from .connect import ensure_groups
                    log.warning("the consumer groups are gone (a server restarted without "
                                "persistence?); making them again")
                    try:
                        ensure_groups(self.r, self.keys)
                    except Exception:     # noqa: BLE001 - the next round tries again
                        pass
                self.stopping.wait(1.0)
                continue
            for entry, fields in entries:
                self.busy.acquire()
                try:
                    self.pool.submit(self._send, entry, fields)
                except RuntimeError:      # shut down: it comes back after the lease
                    self.busy.release()
                    return

    def _send(self, entry: bytes, fields: dict) -> None:
        try:
            self._deliver(fields)
            self.r.xack(self.keys.hooks, HOOK_GROUP, entry)
            self.r.xdel(self.keys.hooks, entry)
        except Exception:       # noqa: BLE001 - left pending: another sender tries later
            log.exception("a webhook of the outbox could not be handled")
        finally:
            self.busy.release()

    def _deliver(self, fields: dict) -> None:
        job_id = fields.get(b"id", b"").decode("utf-8", "replace")
        url = fields.get(b"url", b"").decode("utf-8", "replace")
        shown = redaction.url(url)          # what the log says: no credential
        rec = self.r.hgetall(self.keys.job(job_id))
        if not rec or b"final" not in rec:
            log.warning("webhook %s not sent: the job's record has expired", shown,
                        extra={"job_id": job_id})
            return
        payload = records.view(job_id, rec)
        data = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(TRIES):
            try:
                status = webhook_post.post(url, data, headers, self.policy)
                self.metrics.bytes_out.inc(len(data))
                if status < 400:
                    self.metrics.post("webhook", "delivered")
                    log.info("webhook delivered (%d tries)", attempt + 1,
                             extra={"job_id": job_id})
                    return
                if status < 500:
                    self.metrics.post("webhook", "refused")
                    log.warning("webhook %s refused: HTTP %d", shown, status,
                                extra={"job_id": job_id})
                    return
            except webhook_post.WebhookRefused as exc:
                self.metrics.post("webhook", "refused")
                log.warning("webhook %s not sent: %s", shown, exc, extra={"job_id": job_id})
                return
            except OSError as exc:
                log.warning("webhook %s failed: %s", shown, exc, extra={"job_id": job_id})
            except Exception as exc:        # noqa: BLE001 - http.client's own errors
                log.warning("webhook %s failed: %s: %s", shown, type(exc).__name__, exc,
                            extra={"job_id": job_id})
            if attempt + 1 < TRIES:
                self.metrics.post("webhook", "retry")
                self.stopping.wait(backoff.delay(attempt + 1, 0.5))
        self.metrics.post("webhook", "undelivered")
        log.error("webhook %s not delivered after %d tries", shown, TRIES,
                  extra={"job_id": job_id})
