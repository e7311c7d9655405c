"""The worker's process as child subreaper: what its children leave comes to it, and ends.

A forkserver's children are the forkserver's. If it dies, the kernel gives them to the
nearest subreaper: with this on, the worker itself, which then learns their exit codes
(launcher.ExitWatch.reap) instead of "unknown". Each child is the subreaper of its own
descendants (child/descendants.py), so a process a job starts stays below its child
whatever session or group it moves to; when the child ends, those come here.

The worker's direct children are therefore of three kinds, told apart by registration,
never by guessing: the children a host watches (watched(), until released()), the
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
_foreign: set = set()       # its children before it became a subreaper: never ended here
_killed: dict = {}          # pid -> start time: ended already (said once)
_kill_until = [0.0]         # adopted processes found before this (after a child's exit) end
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
    _foreign.update(procfs.children())   # a start script's sidecar, exec'd into us: not ours
    threading.Thread(target=_sweep_forever, name="gpu-worker-reaper", daemon=True).start()
    return True


@contextlib.contextmanager
def starting():
    """Around a start and its registration: the sweep waits, so it never takes a process
    of ours for an adopted one."""
    with _starting:
        yield


def watched(pid: int) -> None:
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
    """A child's exit was handled: what it left is adopted already (the kernel hands a
    process's orphans over as it exits). Sweep now, ending what is adopted for FAST_S."""
    _kill_until[0] = time.monotonic() + FAST_S
    _wake.set()


def sweep(wait: float = SWEEP_S) -> int:
    """Reap the adopted zombies; within FAST_S of a child's exit, end the adopted processes
    still running (each with everything under it, and its group). Returns how many it
    newly ended (0 when a start held the lock past `wait`: the next sweep)."""
    if not _starting.acquire(timeout=wait):
        return 0
    try:
        children = procfs.children()
        with _lock:
            _own.intersection_update(children)    # reaped by their starter: anyone's pids
            _foreign.intersection_update(children)
            ours = _held | _own
            spared = ours | _foreign
        killing = time.monotonic() < _kill_until[0]
        groups = {os.getpgrp(), *ours}            # ours, and a live child leads its own
        ended = []
        for pid in children:
            if pid in ours:
                continue
            try:
                stat = procfs.stat(pid)
            except OSError:             # no descriptor now: the next sweep
                continue
            if stat is None:
                continue
            if killing and pid not in spared:
                if stat[0] != "Z":
                    _end_tree(pid)
                    if _killed.get(pid) != stat[19]:
                        _killed[pid] = stat[19]
                        ended.append(pid)
                # Its group too, zombie or not: a process that forks itself anew and exits
                # (each copy adopted in turn) is almost always found a zombie; its live copy
                # is in the same group unless it moved.
                if int(stat[2]) not in groups:
                    try:
                        os.killpg(int(stat[2]), signal.SIGKILL)
                    except OSError:
                        pass
            if stat[0] == "Z":          # no one else waits for it: this process is its parent
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        for pid in [p for p in _killed if p not in children]:
            del _killed[pid]
    finally:
        _starting.release()
    if ended:
        log.warning("ended %d process(es) left behind by a child that ended (a job's "
                    "detached processes): pids %s", len(ended),
                    ", ".join(map(str, ended[:10])))
    return len(ended)


def end_adopted(bound: float = 2.0) -> None:
    """At the worker's exit: end what its last children left (at most `bound` s)."""
    if not _on:
        return
    wake()
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        sweep(wait=max(0.0, deadline - time.monotonic()))
        if not _adopted_alive():
            return
        time.sleep(0.02)


def _adopted_alive() -> bool:
    with _lock:
        spared = _held | _own | _foreign
    for pid in procfs.children():
        if pid not in spared:
            try:
                stat = procfs.stat(pid)
            except OSError:
                return True
            if stat is not None and stat[0] != "Z":
                return True
    return False


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
            # Within FAST_S of a child's exit, sweep again at once while passes still find
            # something new to end (a process forking itself anew): each ends what it finds.
            sweep()
            while time.monotonic() < _kill_until[0] and sweep():
                time.sleep(0.01)
        except Exception:     # noqa: BLE001 - a sweep must never end the thread
            log.exception("the reaper's sweep failed")

