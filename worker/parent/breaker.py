"""The restart-storm breaker: too many unplanned child deaths in a window stop respawning,
so a broken worker says so (and the platform replaces it) instead of crash-looping."""
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

    def tripped(self, limit: int) -> bool:
        return len(self.deaths) >= limit
