"""The parent's end of the control channel: non-blocking framed writes with an outbox
(a big job never blocks the loop) and reads that yield whole messages."""
from __future__ import annotations

import collections
import os

from .. import protocol as P


class Channel:
    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self._reader = P.FrameReader()
        self._outbox: collections.deque = collections.deque()   # memoryviews not yet sent
        self.closed = False
        self.eof = False          # the child closed its end (its exit is seen separately)

    @property
    def waiting(self) -> bool:
        """Bytes wait for the socket to drain (the loop then also watches for writable)."""
        return bool(self._outbox)

    def send(self, data) -> None:
        """Send a frame: bytes, or a tuple of bytes-like parts (a forwarded body is never
        copied into one piece; writev sends the parts as they are)."""
        if self.closed:
            return
        parts = (data,) if isinstance(data, (bytes, bytearray)) else data
        if self._outbox:
            self._outbox.extend(memoryview(p) for p in parts)
            return
        try:
            n = os.writev(self.fd, parts)
        except BlockingIOError:
            n = 0
        except OSError:
            self.closed = True    # the child is gone; its exit is seen through its pidfd
            return
        for part in parts:        # what the socket did not take waits, uncopied
            if n >= len(part):
                n -= len(part)
                continue
            self._outbox.append(memoryview(part)[n:])
            n = 0

    def flush(self) -> None:
        box = self._outbox
        try:
            n = os.writev(self.fd, [box[i] for i in range(min(len(box), 64))])
        except BlockingIOError:
            return
        except OSError:
            self.closed = True
            box.clear()
            return
        while n and box:
            if n >= len(box[0]):
                n -= len(box.popleft())
            else:
                box[0] = box[0][n:]
                n = 0

    def read(self) -> list:
        """Every whole message that has arrived (empty at EOF or when none has)."""
        messages = []
        reader = self._reader
        while True:
            try:
                frames = reader.read_from(self.fd)
            except BlockingIOError:
                break
            except P.FrameTooLarge as exc:    # nothing after it can be trusted either
                messages.append(P.Garbled(None, None, str(exc)))
                frames = None
            except OSError:
                frames = None
            if frames is None:
                self.eof = True
                break
            messages.extend(P.decode(frame) for frame in frames)
            if reader.drained:       # a short read: asking again would only say EAGAIN
                break
        return messages
