"""What a child's jobs start stays below the child, its orphans are reaped, and none
outlives it (issue 36).

A process a job starts may leave the child's process group (start_new_session, setsid, a
double-forked daemon): a stop that signals the group would miss it. The child makes itself
the subreaper of its descendants, so while it lives every orphan among them comes to it
(not to the worker, not to init); when it ends they come to the worker, the next subreaper
up, which ends them (parent/reaper.py).

The child reaps the orphans it adopts, never a process its own code started and may wait
for (a Popen's exit status taken from under it reads as 0): its own are the pids that
os.fork, os.forkpty, os.posix_spawn[p] and _posixsubprocess.fork_exec (subprocess's
_fork_exec) returned in this process (subprocess, multiprocessing, asyncio and pty start
processes through them). A zombie child not among them, still there one sweep later (a
fork made in C and waited for at once never is), was adopted: it is reaped. Known limit:
a fork made in C (ctypes, an extension) and waited for more than a second later loses its
status (ECHILD).

A job stopped inside a live child (an async task cancelled, a thread interrupted: the child
goes on) takes with it the processes that appeared below the child during its run, when it
ran alone: with jobs side by side, which started what cannot be told, and they end with
the child.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

from .. import procfs

PR_SET_CHILD_SUBREAPER = 36
SWEEP_S = 1.0

_own: set = set()           # pids this process started (and not yet seen gone)
_running = [0]              # jobs running in a live child (threads, tasks)
_alone: tuple | None = None     # (run, when it began in clock ticks): the one job, alone so far
_lock = threading.Lock()


def install() -> bool:
    """Subreaper of our descendants, own starts recorded, adopted zombies reaped; False
    where the kernel refuses (then orphans go to the worker at once, which ends them)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    _record_starts()
    os.register_at_fork(after_in_child=_forked)
    return True


def _forked() -> None:
    """In a fork of the child: a fresh lock (a thread may have held it at the fork), and
    none of the child's books (its orphans and jobs are not this process's)."""
    global _lock, _alone
    _lock = threading.Lock()
    _own.clear()
    _running[0], _alone = 0, None


def _record_starts() -> None:
    import _posixsubprocess
    import subprocess

    def recorded(start, pid_of):
        def wrapper(*args, **kwargs):
            out = start(*args, **kwargs)
            pid = pid_of(out)
            if pid:
                with _lock:
                    _own.add(pid)
            return out
        wrapper.__wrapped__ = start
        return wrapper

    first = (lambda out: out)
    os.fork = recorded(os.fork, first)
    os.forkpty = recorded(os.forkpty, lambda out: out[0])
    for name in ("posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            setattr(os, name, recorded(getattr(os, name), first))
    _posixsubprocess.fork_exec = recorded(_posixsubprocess.fork_exec, first)
    subprocess._fork_exec = _posixsubprocess.fork_exec     # bound at its import


def _stat(pid: int) -> list:
    try:
        return procfs.stat(pid) or []
    except OSError:
        return []


def _state(pid: int) -> str:
    stat = _stat(pid)
    return stat[0] if stat else ""


def _parent(pid: int) -> int:
    stat = _stat(pid)
    return int(stat[1]) if len(stat) > 1 else 0


def sweep(seen: set) -> set:
    """Reap the adopted zombies seen in the last sweep too; the adopted zombies now."""
    now = procfs.children()
    with _lock:
        own = set(_own)
    gone = {pid for pid in own.difference(now) if _parent(pid) != os.getpid()}
    with _lock:
        _own.difference_update(gone)         # reaped by its owner: the pid is anyone's
    zombies = {pid for pid in now if pid not in own and _state(pid) == "Z"}
    for pid in zombies & seen:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return zombies - seen


_seen: set = set()          # the adopted zombies of the last sweep
_swept = [0.0]              # when (monotonic)


def tick() -> None:
    """From the heartbeat thread (no thread of our own: one costs a child's start 0.5 ms):
    a sweep once SWEEP_S has passed."""
    global _seen
    now = time.monotonic()
    if now - _swept[0] < SWEEP_S:
        return
    _swept[0] = now
    try:
        _seen = sweep(_seen)
    except Exception:      # noqa: BLE001 - the sweep must never end the heartbeat
        _seen = set()


_TICK = os.sysconf("SC_CLK_TCK")


def _ticks_now() -> int:
    """Now on the clock of /proc's starttime: clock ticks since boot."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICK)


def job_began(run: int) -> None:
    """A job starts in a live child (a thread or a task): what starts below the child from
    now is its, if it is alone; with another job beside it nothing can be told apart.
    Cheap: a clock read (this is every async job's path)."""
    global _alone
    with _lock:
        _running[0] += 1
        _alone = (run, _ticks_now()) if _running[0] == 1 else None


def job_ended(run: int, stopped: bool) -> None:
    """A job cancelled or timed out in a live child, alone all its run: the processes
    below the child that started during it end with it."""
    global _alone
    with _lock:
        _running[0] = max(0, _running[0] - 1)       # an inline job never began here
        alone, at = _alone if _alone is not None else (None, 0)
        if alone == run:
            _alone = None
    if not stopped or alone != run:
        return
    import psutil
    for pid in procfs.children():
        stat = _stat(pid)
        if len(stat) < 20 or int(stat[19]) < at:   # before it (its own tick counts: a job
            continue                                # starts a process at once, typically)
        try:
            tree = [psutil.Process(pid)]
            tree += tree[0].children(recursive=True)
        except psutil.Error:
            continue
        for each in tree:
            try:
                each.kill()
            except psutil.Error:
                pass


def end_all() -> None:
    """SIGKILL every descendant (the worker is gone: nobody else will)."""
    import psutil
    try:
        for proc in psutil.Process().children(recursive=True):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass
    except psutil.Error:
        pass
