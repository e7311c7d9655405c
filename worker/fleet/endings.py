"""Waiting for a job's end without holding a connection: one subscription per gateway
process to each served endpoint's `ended` channel (the finish and cancel scripts publish
the job's id there) wakes every /runsync and /cancel waiting on that job.

A waiter registers before it reads the record, so an end published after that read wakes
it; an end published while the subscription was down is caught by waking every waiter
once it is back (each reads its record again) — whether our loop subscribed again or the
client library reconnected it by itself — and by each waiter's own re-read every few
seconds, whatever happened to the subscription.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from ..backoff import delay
from .records import text

log = logging.getLogger("worker.gateway")
LISTEN_SLICE_S = 1.0          # one read of the subscription
RECENT = 10_000               # ends remembered for a waiter that registers just after


class Endings:
    def __init__(self, client, channels: list):
        self.client, self.channels = client, list(channels)
        self._waiting: dict[tuple, set] = {}
        self._recent: collections.OrderedDict = collections.OrderedDict()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @contextlib.contextmanager
    def watch(self, channel: str, job_id: str):
        """An asyncio.Event set when `job_id` ends (or may have: read the record again)."""
        key, event = (channel, job_id), asyncio.Event()
        self._waiting.setdefault(key, set()).add(event)
        if key in self._recent:        # it ended between its submit and this watch
            event.set()
        try:
            yield event
        finally:
            events = self._waiting.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[key]

    def _wake(self, key: tuple) -> None:
        for event in self._waiting.get(key, ()):
            event.set()
        self._recent[key] = None
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def _reconnected(self, connection) -> None:
        log.info("the queue's end notices are back (reconnected)")
        self._wake_all()

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def _listen(self) -> None:
        failures, down = 0, False
        while True:
            try:
                async with self.client.pubsub() as sub:
                    await sub.subscribe(*self.channels)
                    # a reconnect the library makes by itself resubscribes (its callback
                    # runs first), then wakes every waiter (a weak reference: a method)
                    sub.connection.register_connect_callback(self._reconnected)
                    if down:
                        log.info("the queue's end notices are back")
                    failures, down = 0, False
                    self._wake_all()        # anything that ended while not subscribed
                    while True:
                        msg = await sub.get_message(ignore_subscribe_messages=True,
                                                    timeout=LISTEN_SLICE_S)
                        if msg and msg.get("type") == "message":
                            self._wake((text(msg["channel"]), text(msg["data"])))
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # noqa: BLE001 - any fault: subscribe again, later
                if not down:
                    log.warning("the queue's end notices stopped (%s: %s); waiters read "
                                "their jobs' records until they are back",
                                type(exc).__name__, exc)
                down = True
                failures += 1
                await asyncio.sleep(delay(failures, 0.1, 2.0))

