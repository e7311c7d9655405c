"""Lines drawn over with carriage returns (tqdm and other progress bars) as log lines: the
final state of each, and at most every PROGRESS_EVERY seconds the state so far, never the
raw `\\r` bytes. Used by the child (a job's tagged output) and the parent (output read from
a child's pipes, e.g. a bar drawn while the model loads).
"""
from __future__ import annotations

import time
from typing import Callable, Hashable

PROGRESS_EVERY = 5.0


def last_drawn(line: str) -> str:
    """What a line drawn over with carriage returns shows last: its last segment that is
    not blank (a bar cleared at its end keeps its last state)."""
    if "\r" not in line:
        return line
    for segment in reversed(line.split("\r")):
        if segment.strip():
            return segment
    return ""


class Redraws:
    """Throttles the progress of unfinished lines, per stream (or job)."""

    def __init__(self, every: float = PROGRESS_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._since: dict = {}          # key -> when its line was last shown (or began)

    def drawn(self, key: Hashable, head: str) -> tuple[str, str | None]:
        """`head`: an unfinished line up to its last carriage return. Returns its state now
        (to keep, so the final line still has it) and the same state when it is time to
        show progress, else None."""
        state = last_drawn(head)
        now = self.clock()
        since = self._since.setdefault(key, now)
        if state and now - since >= self.every:
            self._since[key] = now
            return state, state
        return state, None

    def ended(self, key: Hashable) -> None:
        """Its line ended: the next one starts its own clock."""
        self._since.pop(key, None)
