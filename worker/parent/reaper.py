"""The worker's process as child subreaper: children whose launcher died come to it.

A forkserver's children are the forkserver's. If it dies, the kernel gives them to the
nearest subreaper: with this on, the worker itself, which then learns their exit codes
(launcher.ExitWatch.reap) instead of "unknown". It must then reap what it adopts, but only
what it launched, never waitpid(-1): that would take the exit status of a process some
other part of the program started and waits for (a forkserver, a subprocess).

What it adopts beyond the children it watches (a child it let go of, the processes of a
dead child's group) is reaped by a sweep, once a second, of the worker's own children
that are zombies and that it launched or that belong to the group of one it launched.
Turned on by the command-line worker (cli.py), the program that owns its process; a
program that embeds the supervisor decides for itself.
"""
from __future__ import annotations

import collections
import ctypes
import glob
import logging
import os
import threading

log = logging.getLogger("worker")

PR_SET_CHILD_SUBREAPER = 36
SWEEP_S = 1.0

_lock = threading.Lock()
_launched: collections.deque = collections.deque(maxlen=4096)   # pids, oldest first
_held: set = set()          # pids a host watches (and reaps) now: the sweep leaves them
_on = False


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux 3.4+), and start the sweep."""
    global _on
    if _on:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.info("could not become a child subreaper (%s): the exit code of a child whose "
                 "launcher died is unknown", exc)
        return False
    _on = True
    threading.Thread(target=_sweep_forever, name="gpu-worker-reaper", daemon=True).start()
    return True


def launched(pid: int) -> None:
    """A child was started, and a host watches it."""
    with _lock:
        _launched.append(pid)
        _held.add(pid)


def released(pid: int) -> None:
    """Its host is done with it (reaped, or let go of alive)."""
    with _lock:
        _held.discard(pid)


def sweep() -> int:
    """Reap this process's zombie children that it launched, or that were in the group of
    one it launched; returns how many."""
    reaped = 0
    with _lock:
        ours = set(_launched)
        held = set(_held)
    for pid in _children():
        try:
            stat = proc_stat(pid)
        except OSError:             # no descriptor now: the next sweep
            continue
        if stat is None or stat[0] != "Z" or pid in held:
            continue
        if pid in ours or int(stat[2]) in ours:       # its process group
            try:
                os.waitpid(pid, os.WNOHANG)
                reaped += 1
            except ChildProcessError:
                pass
    return reaped


def _sweep_forever() -> None:
    stop = threading.Event()
    while not stop.wait(SWEEP_S):
        try:
            sweep()
        except Exception:     # noqa: BLE001 - a sweep must never end the thread
            log.exception("the reaper's sweep failed")


def _children() -> list:
    pids = []
    for path in glob.glob("/proc/self/task/*/children"):
        try:
            with open(path) as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def proc_stat(pid: int) -> list | None:
    """/proc/<pid>/stat's fields after the command name: [state, ppid, pgrp, ...]
    (field n of proc(5) at index n - 3); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None             # other errors (EMFILE) say nothing about the process
