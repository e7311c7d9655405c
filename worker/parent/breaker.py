"""The restart-storm breaker: children that keep dying before they finish a job stop
respawning, so a broken worker says so (and the platform replaces it) instead of
crash-looping.

The core records a death only when the child finished no job (it died at start or on its
first job) and resets the count whenever any job finishes: a poison input that crashes a
child now and then, between successes, is that job's failure, not a storm."""
from __future__ import annotations

import collections


class RestartBreaker:
    def __init__(self):
        self.deaths: collections.deque[float] = collections.deque()

    def record(self, now: float, window: float) -> int:
        """Count a death at `now`; returns the deaths within the last `window` seconds."""
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > window:
            self.deaths.popleft()
        return len(self.deaths)

    def reset(self) -> None:
        self.deaths.clear()

    def tripped(self, limit: int) -> bool:
        return len(self.deaths) >= limit
