"""What /proc says of a process: its children, its state. Shared by the worker's reaper and
a child's (both sides of the process boundary)."""
from __future__ import annotations

import glob


def children(pid: int | str = "self") -> list:
    """A process's child pids (every thread's); [] when it is gone."""
    pids = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def stat(pid: int) -> list | None:
    """/proc/<pid>/stat's fields after the command name: [state, ppid, pgrp, ...]
    (field n of proc(5) at index n - 3); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None             # other errors (EMFILE) say nothing about the process
