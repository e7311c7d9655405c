"""The parent's end of the control channel: non-blocking framed writes with an outbox
(a big job never blocks the loop) and reads that yield whole messages."""
from __future__ import annotations

import os

from .. import protocol as P


class Channel:
    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self._reader = P.FrameReader()
        self._outbox = bytearray()
        self.closed = False
        self.eof = False          # the child closed its end (its exit is seen separately)

    @property
    def waiting(self) -> bool:
        """Bytes wait for the socket to drain (the loop then also watches for writable)."""
        return bool(self._outbox)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self._outbox:
            self._outbox += data
            return
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.closed = True    # the child is gone; its exit is seen through the sentinel
            return
        if n < len(data):
            self._outbox += data[n:]

    def flush(self) -> None:
        try:
            n = os.write(self.fd, self._outbox)
        except BlockingIOError:
            return
        except OSError:
            self.closed = True
            n = len(self._outbox)
        del self._outbox[:n]

    def read(self) -> list:
        """Every whole message that has arrived (empty at EOF or when none has)."""
        messages = []
        reader = self._reader
        while True:
            try:
                frames = reader.read_from(self.fd)
            except BlockingIOError:
                break
            except OSError:
                frames = None
            if frames is None:
                self.eof = True
                break
            messages.extend(P.decode(frame) for frame in frames)
            if reader.drained:       # a short read: asking again would only say EAGAIN
                break
        return messages
