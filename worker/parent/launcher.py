"""The launcher seam: how a child process comes to exist, and the parent's handle on it.

A `Launcher` starts a child for a slot from a template — a warm one (the forkserver that
imported the handler module, WORKER_WARM_REFRESH) or a cold one (the forkserver with its
preloads, or a fresh interpreter) — and reports the template's health. It decides
nothing: when to start, replace or keep a child is the core's. The handle it returns,
`ChildProcess`, is how the parent signals, watches and releases that child.

A child's exit is learned from the child, never only from its launcher (which may be
killed or stopped while its children live on): `ExitWatch` holds a pidfd on the child's
pid (or, where pidfd_open is missing or refused, polls /proc). The exit code comes from
the kernel when the parent is the child's parent (spawn, or an orphan it adopted as
subreaper: reaper.py), else from the launcher's report, else it is unknown.

Today's implementation is mp_launcher.py (multiprocess's forkserver, or spawn). What
every launcher must do the same way is here: the secrets never reach a started process's
environment, and the settings a child gets never hold them.
"""
from __future__ import annotations

import abc
import contextlib
import errno
import os
import select
import signal
import socket
import threading

from ..config import Settings
from ..targets import SECRET_ENV, SECRET_SETTINGS
from ..procfs import stat as proc_stat

_env_lock = threading.Lock()


# What ChildProcess.poll_exit() finds.
ALIVE = "alive"
EXITED = "exited"
PENDING = "pending"      # gone, its code not yet known (the launcher has not reported)

# Start errors that say "not now" rather than "never": the core retries them with backoff.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                              errno.ENOBUFS, errno.EINTR})


def transient(exc: BaseException) -> bool:
    """Is this start error worth a retry: out of descriptors or memory for a moment, or
    a launcher that died or is being replaced?"""
    if isinstance(exc, (EOFError, ConnectionError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


class ExitWatch:
    """Whether one process has exited, learned from the kernel: a pidfd (readable once
    the process has exited, whoever its parent is), or, where pidfd_open is missing or
    refused, its /proc entry (gone, a zombie, or another process with its pid)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd: int | None = None
        self._start: str | None = None      # its start time: another process with its pid
        try:
            self.fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            try:
                self._start = _start_time(pid)
            except OSError:
                pass                        # read at the first look

    def gone(self) -> bool:
        """OSError: /proc could not be read now (it says nothing about the process)."""
        if self.fd is not None:
            return readable(self.fd)
        stat = proc_stat(self.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return True
        if self._start is None:
            self._start = stat[19]
        return stat[19] != self._start

    def reap(self) -> int | None:
        """Its exit code if the parent is its parent and it has exited (reaped now);
        None while it runs. ChildProcessError: not the parent's child."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _start_time(pid: int) -> str | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[19]       # starttime, field 22


def readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class ChildProcess(abc.ABC):
    """The parent's handle on one child: its pid, its channel's fd, its exit watch (an fd
    readable once it has exited, or None: poll), the fd where its launcher reports its
    exit (or None), the read ends of its stdout/stderr capture pipes."""

    pid: int
    fd: int
    exit_fd: int | None
    report_fd: int | None
    stdout_fd: int
    stderr_fd: int

    @abc.abstractmethod
    def poll_exit(self) -> tuple:
        """(ALIVE, None), (PENDING, None): gone, its code not reported yet, or
        (EXITED, code): code negative when killed by that signal, None when unknown."""

    @abc.abstractmethod
    def give_up_code(self) -> None:
        """It is gone and its code will not come: poll_exit says (EXITED, None)."""

    def report_closed(self) -> bool:
        """Its launcher's report fd was closed with the child alive: the launcher died."""
        return False

    @abc.abstractmethod
    def release(self) -> None:
        """After its exit: reap it and close the parent's ends."""

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group (or the child alone before it has made
        its group)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            self.signal(sig)
        except PermissionError:
            pass

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """After exit: kill what is left of its group (grandchildren holding memory) and
        release it."""
        self.signal_group(signal.SIGKILL)
        self.release()


class Launcher(abc.ABC):
    method: str            # how children start: "forkserver" or "spawn"
    preload: list          # modules a new child has imported already

    @abc.abstractmethod
    def start(self, target, settings: Settings, checks: bool = False,
              env: dict | None = None) -> ChildProcess:
        """Start a child for `target`. `env`: what its environment gets (its
        CUDA_VISIBLE_DEVICES, WORKER_CHILD_INDEX); `checks`: run the fitness checks.
        Called off the supervisor's loop (it may block); whatever it opened is closed
        when it raises."""

    def start_bound(self, settings: Settings) -> float | None:
        """Seconds a start may take now before the launcher is declared dead."""
        return settings.launch_timeout or None

    def declare_dead(self, reason: str) -> None:
        """It did not answer in time: end its template, so that the next start makes a
        new one (children already started are not touched)."""

    def template_lost(self, reason: str) -> None:
        """Its template died on its own (a child's report fd closed while it lived)."""

    @abc.abstractmethod
    def warm_off(self, reason: str) -> None:
        """Children start from the cold template from now on (the warm one was refused)."""

    @abc.abstractmethod
    def health(self) -> dict:
        """The template as /health shows it: method, state, pid, warm refresh."""


def child_settings(settings: Settings) -> dict:
    """The settings a child gets: never the secrets (the local API's token)."""
    return {k: v for k, v in settings.to_dict().items() if k not in SECRET_SETTINGS}


def passed_env(settings: Settings, env: dict | None) -> dict:
    """What a child's environment gets on top of its template's: the secrets named in
    WORKER_CHILD_ENV_PASS (and only those), and `env`."""
    passed = {name: os.environ[name] for name in settings.child_env_pass
              if name in SECRET_ENV and name in os.environ}
    passed.update(env or {})
    return passed


@contextlib.contextmanager
def without_secrets(extra: dict | None = None):
    """Start processes without the secrets in their exec environment: a forkserver (and
    so every child forked from it) or a spawned interpreter would otherwise carry them in
    /proc/self/environ, whatever the child later removes from os.environ. `extra` is set
    for the while (what a template starting now must read at its start)."""
    with _env_lock:
        saved = {name: os.environ.pop(name) for name in SECRET_ENV if name in os.environ}
        os.environ.update(extra or {})
        try:
            yield
        finally:
            for name in extra or {}:
                os.environ.pop(name, None)
            os.environ.update(saved)


HEADROOM = 16      # descriptors a start through multiprocess opens at most, at once


def headroom() -> None:
    """Fail now (EMFILE), with nothing open, unless a start's descriptors are free:
    multiprocess leaks the first of two pipes when the second cannot be made
    (forkserver.connect_to_new_process), and a request it cuts short kills the forkserver.
    Starts are serialised, so only another thread's open can take them meanwhile."""
    fds = []
    try:
        for _ in range(HEADROOM):
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    finally:
        for fd in fds:
            os.close(fd)


def grow_buffers(fd: int, size: int = 4 * 2**20) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)   # the kernel caps it at its max
    except OSError:
        pass
    finally:
        sock.close()


def end_tree(pid: int) -> None:
    """SIGKILL a process and everything under it (a forkserver that imported the handler
    may hold what its import started: a thread that would keep it from exiting, a
    process)."""
    import psutil
    try:
        root = psutil.Process(pid)
        for proc in root.children(recursive=True):
            proc.kill()
        root.kill()
    except psutil.Error:
        pass
