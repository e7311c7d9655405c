"""Can this copy of the handler live beside the active child? A spare child (set up while
another child of its slot serves) asks once its module is set up. A handler that starts
its model server at import on a fixed port (as worker-sglang does) gets a second copy
whose server fails "address in use" in a process it started, while its import may still
succeed — it reached the active child's server. Promoted, it would have no server once
the active child's is gone. So: when the active child's process tree listens on more
ports (TCP listening, UDP bound) than this copy's, this copy refuses to serve as a spare
(a setup failure whose text turns the slot's spare off: parent/spares.py ONE_COPY_ONLY).
It asks once, at the end of its set-up: a server that starts listening only after the
module's import has returned is not seen."""
from __future__ import annotations

import os
import socket
import time

import psutil

BESIDE = "WORKER_SPARE_BESIDE"       # the active child's pid, in a spare's environment
REFUSAL = "a second copy cannot set up beside the first"
WAIT_S = 30.0          # for the servers this copy started to listen (while they live)


def listening(pid: int) -> set:
    """The ports a process and its descendants listen on: ("tcp", n) listening, ("udp", n)
    bound and not connected."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return set()
    ports = set()
    for proc in procs:
        try:        # net_connections from psutil 6; connections before it
            found = getattr(proc, "net_connections", None) or proc.connections
            for c in found(kind="inet"):
                if c.laddr and c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
                    ports.add(("tcp", c.laddr.port))
                elif c.laddr and c.type == socket.SOCK_DGRAM and not c.raddr:
                    ports.add(("udp", c.laddr.port))
        except psutil.Error:
            pass
    return ports


def check() -> None:
    """Raise (a setup failure) when this spare cannot have what the active child has."""
    active = os.environ.get(BESIDE, "")
    if not active.isdigit():
        return
    theirs = listening(int(active))
    deadline = time.monotonic() + WAIT_S
    while theirs:
        mine = listening(os.getpid())
        if len(mine) >= len(theirs):
            return
        # waits while a process this copy started may still be starting its server
        if time.monotonic() >= deadline or not _descendants():
            raise RuntimeError(
                f"{REFUSAL}: the active child's processes listen on port(s) "
                f"{_named(theirs)}, this copy's on {_named(mine) or 'none'} (a server on a "
                "fixed port, started at import?). The slot keeps no spare child.")
        time.sleep(0.1)


def _named(ports: set) -> str:
    return ", ".join(f"{n}/{proto}" for proto, n in sorted(ports, key=lambda p: (p[1], p[0])))


def _descendants() -> list:
    """This copy's live descendants (one that exited and is not yet waited for is not)."""
    live = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
        except psutil.Error:
            pass
    return live
