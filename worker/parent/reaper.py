"""The worker's process as child subreaper: what its children leave comes to it, and ends.

A forkserver's children are the forkserver's. If it dies, the kernel gives them to the
nearest subreaper: with this on, the worker itself, which then learns their exit codes
(launcher.ExitWatch.reap) instead of "unknown". Each child is the subreaper of its own
descendants (child/descendants.py), so a process a job starts stays below its child
whatever session or group it moves to; when the child ends, those come here.

The worker's direct children are therefore of three kinds, told apart by registration,
never by guessing: the children a host watches (launched(), until released()), the
processes the worker starts for itself (own(): the forkserver; a start runs under
starting(), so none is seen half-registered), and adopted ones — everything else. Adopted
processes are what an ended child left behind: the sweep SIGKILLs each with everything
under it and reaps it, once a second and at once when a child's exit is handled (wake()).
It never calls waitpid(-1), and never waits for a watched or own pid: their exit codes
belong to their hosts and to multiprocess.
Turned on by the command-line worker (cli.py), the program that owns its process; a
program that embeds the supervisor decides for itself.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time

import psutil

from .. import procfs

log = logging.getLogger("worker")

PR_SET_CHILD_SUBREAPER = 36
SWEEP_S = 1.0
FAST_S = 2.0          # sweeping at once while adoptions keep coming, at most this long

_lock = threading.Lock()
_starting = threading.Lock()     # held while a process of ours is started and registered
_held: set = set()          # pids a host watches (and reaps) now: the sweep leaves them
_own: set = set()           # processes the worker started for itself (the forkserver)
_wake = threading.Event()
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


@contextlib.contextmanager
def starting():
    """Around a start and its registration: the sweep waits, so it never takes a process
    of ours for an adopted one."""
    with _starting:
        yield


def launched(pid: int) -> None:
    """A child was started, and a host watches it."""
    with _lock:
        _held.add(pid)


def released(pid: int) -> None:
    """Its host is done with it (reaped, or let go of alive)."""
    with _lock:
        _held.discard(pid)


def own(pid: int | None) -> None:
    """A process the worker started for itself: never ended or reaped here (its starter
    waits for it); forgotten once it is no longer the worker's child."""
    if pid:
        with _lock:
            _own.add(pid)


def wake() -> None:
    """A child's exit was handled: sweep now (what it left is adopted already)."""
    _wake.set()


def sweep() -> int:
    """Reap the adopted zombies, end the adopted processes still running (each with
    everything under it); returns how many were adopted."""
    with _starting:
        children = procfs.children()
        with _lock:
            _own.intersection_update(children)    # reaped by their starter: anyone's pids
            ours = _held | _own
        adopted = [pid for pid in children if pid not in ours]
        ended = []
        spared = {os.getpgrp(), *ours}       # our group; a child leads its own
        for pid in adopted:
            try:
                stat = procfs.stat(pid)
            except OSError:             # no descriptor now: the next sweep
                continue
            if stat is None:
                continue
            if stat[0] != "Z":
                ended.append(pid)
                _end_tree(pid)
            # Its group too, zombie or not: a process that forks itself anew and exits
            # (each copy adopted in turn) is always found a zombie; its live copy is in
            # the same group unless it moved.
            if int(stat[2]) not in spared:
                try:
                    os.killpg(int(stat[2]), signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    if ended:
        log.warning("ended %d process(es) left behind by a child that ended (a job's "
                    "detached processes): pids %s", len(ended),
                    ", ".join(map(str, ended[:10])))
    return len(adopted)


def end_adopted(bound: float = 2.0) -> None:
    """At the worker's exit: sweep until nothing adopted is left (at most `bound` s)."""
    if not _on:
        return
    deadline = time.monotonic() + bound
    while sweep() and time.monotonic() < deadline:
        time.sleep(0.02)


def _end_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (they come here as their parents die)."""
    try:
        tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        tree = [pid]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _sweep_forever() -> None:
    while True:
        _wake.wait(SWEEP_S)
        _wake.clear()
        try:
            # While adoptions keep coming (a process forking itself anew), sweep again at
            # once, for up to FAST_S: each pass ends what the last one found.
            deadline = time.monotonic() + FAST_S
            while sweep() and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception:     # noqa: BLE001 - a sweep must never end the thread
            log.exception("the reaper's sweep failed")

