"""Events for the supervisor's loop from any thread: a queue and a wake-up pipe.

Sources put their commands here (events.Submit, Cancel, ...); so do the loop's own effects
whose outcome is an event (a child started, a reading taken), for a later turn.

The loop drains every command before it waits on its selector, so it needs waking only
when it may be waiting: never from its own thread, and once until it has read the byte
(a burst of submits costs one wake-up, not one write each).
"""
from __future__ import annotations

import collections
import os
import threading
from typing import Any


class Commands:
    def __init__(self):
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._pending = False            # a wake-up byte is in the pipe, not yet read
        self.loop_ident: int | None = None
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def put(self, event: Any) -> bool:
        """Queue an event for the loop; False once the loop has ended."""
        with self._lock:
            if self._closed:
                return False
            self._queue.append(event)
            if self._pending or threading.get_ident() == self.loop_ident:
                return True
            self._pending = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass   # the pipe is full of wake-ups already
            return True

    def woken(self) -> None:
        """The loop saw the pipe readable: read it, then clear the flag, before draining
        the queue. In that order: a put between the read and the clear writes nothing, and
        is drained next; cleared first, a put's byte could be read with the earlier one,
        leaving the flag set on an empty pipe, and the loop asleep on later commands."""
        try:
            os.read(self.wake_fd, 4096)
        except BlockingIOError:
            pass
        self._pending = False

    def pop(self) -> Any:
        """The next event, or None."""
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def close(self) -> list:
        """No more events; returns those queued but never handled."""
        with self._lock:
            self._closed = True
            for fd in (self.wake_fd, self._wake_w):
                os.close(fd)
        left = list(self._queue)
        self._queue.clear()
        return left

    def __bool__(self) -> bool:
        return bool(self._queue)
