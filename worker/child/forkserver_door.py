"""The forkserver answers only its parent.

multiprocess's forkserver forks a process for whoever connects to its socket, and that
process unpickles what the peer then writes, before any of a child's set-up runs. Our
children can reach that socket: its address is in their memory, and a child running as
root owns it (mode 0600 stops nobody who owns it). So, in the forkserver, the listener
accepts a connection only when the kernel says it comes from the worker: SO_PEERCRED
gives the pid that called connect(), recorded by the kernel, which no other process can
forge (a shared key could not do this: every child holds a copy of the forkserver's
memory). Any other peer is closed before a byte of its request is read, logged once, and
the forkserver goes on.

multiprocess's forkserver main() makes its listener with `socket.socket(socket.AF_UNIX,
fileno=...)` from its module's `socket` name: that name is given a module whose `socket`
is the guarded class (mp_launcher checks that main() still reads it that way, else
children start with spawn). A child puts the real module back before the handler runs.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import types

PARENT = os.getppid()       # imported first thing in the forkserver: the worker started it
_CREDENTIALS = struct.Struct("3i")     # struct ucred: pid, uid, gid
_logged: set = set()
_LOG_PEERS = 32             # peers named in the log at most; past that, one more line


class GuardedListener(socket.socket):
    def accept(self):
        conn, address = super().accept()
        try:
            pid, uid, _ = _CREDENTIALS.unpack(conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
        except OSError:
            pid, uid = -1, -1
        # The worker's pid, while the worker lives: once it has died (this process was
        # adopted: getppid changed), its pid may be taken by anyone.
        if pid == PARENT and os.getppid() == PARENT:
            return conn, address
        conn.close()
        _refused(pid, uid)
        # multiprocess's loop treats ECONNABORTED as a connection that went away.
        raise ConnectionAbortedError(errno.ECONNABORTED, "refused: not the worker")


def _refused(pid: int, uid: int) -> None:
    if pid in _logged or len(_logged) > _LOG_PEERS:
        return
    _logged.add(pid)
    more = " (further refusals are not logged)" if len(_logged) > _LOG_PEERS else ""
    line = (f"gpu-worker: the forkserver refused a request from pid {pid} (uid {uid}): only "
            f"the worker (pid {PARENT}) may ask it for a process{more}\n")
    try:
        os.write(2, line.encode())
    except OSError:
        pass


class _GuardedSocketModule(types.ModuleType):
    """The socket module, but for its `socket` class."""

    def __getattr__(self, name):
        return getattr(socket, name)


def guard() -> None:
    """In the forkserver, before multiprocess's main() makes its listener."""
    from multiprocess import forkserver
    module = _GuardedSocketModule("socket")
    module.socket = GuardedListener
    forkserver.socket = module


def restore() -> None:
    """In a child: multiprocess's own module back, for a handler that starts processes."""
    try:
        from multiprocess import forkserver
    except ImportError:
        return
    if isinstance(forkserver.socket, _GuardedSocketModule):
        forkserver.socket = socket
