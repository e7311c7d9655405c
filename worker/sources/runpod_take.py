"""The job-take request, on a connection another thread can abort.

A take long-polls (the platform holds it up to 90 s). On SIGTERM an idle worker must not
wait that out, and closing a `requests.Session` does not interrupt a request in flight;
shutting down the socket does, at once. So the take uses http.client on a connection this
class owns (kept alive between takes, as a session would).

An answer that has begun to arrive is never cut: the platform has handed its jobs to this
worker, and cutting the read would lose them. Nor is one the platform may be sending: it
can hand a job to the take a moment before the stop, and its bytes arrive a moment after
(the soak lost one job per SIGTERM that way). So a stop first leaves: no later take, and
the one in flight is read for up to LEAVE_S; only then is it cut. Jobs that come are run
within the shutdown grace or refused and reported.
"""
from __future__ import annotations

import http.client
import select
import socket
import threading
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 95.0          # the platform long-polls up to 90 s
LEAVE_S = 2.0                # after a stop, how long a take's answer may still come


class TakeError(Exception):
    """The take failed (connection, protocol); retried with backoff."""


class TakeAborted(Exception):
    """abort() was called: the worker is stopping."""


class TakeClient:
    def __init__(self, headers: dict):
        self.headers = {**headers, "Accept": "application/json"}
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._origin: tuple | None = None
        self._aborted = False
        self._answering = False      # the answer's status line has been read

    def get(self, url: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET; raises TakeError or TakeAborted."""
        parts = urlsplit(url)
        conn = self._connection(parts)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            if conn.sock is None:
                conn.connect()
                conn.sock.settimeout(READ_TIMEOUT)
                if self._aborted:       # abort() came while we connected
                    raise OSError("aborted")
            conn.request("GET", path or "/", headers=self.headers)
            resp = conn.getresponse()
            self._answering = True
            body = resp.read()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._drop(conn)
            if self._aborted:
                raise TakeAborted() from None
            raise TakeError(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._answering = False
        if resp.will_close:
            self._drop(conn)
        return resp.status, resp.getheader("Content-Type", "") or "", body

    def leave(self) -> None:
        """Refuse any later take; the take in flight goes on, and its answer, if one comes,
        is read. Its socket is not touched: a half-close of a TLS socket (RunPod's takes
        are https) drops the TLS layer, and the answer could no longer be read."""
        with self._lock:
            self._aborted = True

    def abort(self) -> None:
        """Cut the take in flight, if any — unless its answer is arriving — and refuse any
        later one."""
        with self._lock:
            self._aborted = True
            conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None and not self._answering and not _readable(sock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _connection(self, parts) -> http.client.HTTPConnection:
        origin = (parts.scheme, parts.netloc)
        with self._lock:
            if self._aborted:
                raise TakeAborted()
            if self._conn is not None and self._origin != origin:
                self._conn.close()
                self._conn = None
            if self._conn is None:
                cls = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
                self._conn = cls(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)
                self._origin = origin
            return self._conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            if self._conn is conn:
                self._conn = None


def _readable(sock: socket.socket) -> bool:
    """Bytes of an answer (or its end) are waiting to be read."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
