"""The one backoff rule: the wait before try number `step` doubles from `first`, up to
`cap`, optionally spread by ±`jitter` so that many clients do not retry in step.
Every retry that backs off uses it (a queue's take, a post, a webhook, a download, a
child's start, a spare's rebuild, the gateway's end notices). Waits that stay fixed on
purpose are not backoffs: RunPod's 5 s after a 429 (its rule), the stop-poll's and the
webhook outbox's 1 s before asking again, NVML's 1 s; the Redis client's own retries
(fleet/connect.py) use redis-py's ExponentialBackoff, made for its Retry."""
from __future__ import annotations

import random


def delay(step: int, first: float, cap: float = float("inf"), jitter: float = 0.0) -> float:
    """Seconds to wait before the `step`-th retry (1: the first): first, 2×first, 4×first
    ..., at most `cap`, times a random factor in [1 - jitter, 1 + jitter]."""
    wait = min(cap, first * 2.0 ** min(max(step, 1) - 1, 64))
    return wait * random.uniform(1.0 - jitter, 1.0 + jitter) if jitter else wait


class Backoff:
    """A retry loop's backoff: next() is the wait after each failure (jitter ±20%),
    reset() after a success."""

    def __init__(self, first: float, cap: float):
        self.first, self.cap, self.step = first, cap, 0

    def next(self) -> float:
        self.step += 1
        return delay(self.step, self.first, self.cap, jitter=0.2)

    def reset(self) -> None:
        self.step = 0
