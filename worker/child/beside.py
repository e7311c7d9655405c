"""Can this copy of the handler live beside the active child? A spare child (set up while
another child of its slot serves) asks once its module is set up. A handler that starts
its model server at import on a fixed port (as worker-sglang does) gets a second copy
whose server fails "address in use" in a process it started, while its import may still
succeed — it reached the active child's server. Promoted, it would have no server once
the active child's is gone. So: when the active child's process tree listens on more
TCP ports than this copy's, this copy refuses to serve as a spare (a setup failure whose
text turns the slot's spare off: parent/spares.py ONE_COPY_ONLY)."""
from __future__ import annotations

import os
import time

import psutil

BESIDE = "WORKER_SPARE_BESIDE"       # the active child's pid, in a spare's environment
REFUSAL = "a second copy cannot set up beside the first"
WAIT_S = 5.0                         # for this copy's own servers to start listening


def listening(pid: int) -> set:
    """The TCP ports a process and its descendants listen on."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return set()
    ports = set()
    for proc in procs:
        try:        # net_connections from psutil 6; connections before it
            found = getattr(proc, "net_connections", None) or proc.connections
            ports.update(c.laddr.port for c in found(kind="tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr)
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
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{REFUSAL}: the active child's processes listen on port(s) "
                f"{', '.join(map(str, sorted(theirs)))}, this copy's on "
                f"{', '.join(map(str, sorted(mine))) or 'none'} (a server on a fixed port, "
                "started at import?). The slot keeps no spare child.")
        time.sleep(0.1)
