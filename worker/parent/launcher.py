"""The launcher seam: how a child process comes to exist, and the parent's handle on it.

A `Launcher` starts a child for a slot from a template — a warm one (the forkserver that
imported the handler module, WORKER_WARM_REFRESH) or a cold one (the forkserver with its
preloads, or a fresh interpreter) — and reports the template's health. It decides
nothing: when to start, replace or keep a child is the core's. The handle it returns,
`ChildProcess`, is how the parent signals, watches and releases that child.

Today's implementation is mp_launcher.py (multiprocess's forkserver, or spawn). What
every launcher must do the same way is here: the secrets never reach a started process's
environment, and the settings a child gets never hold them.
"""
from __future__ import annotations

import abc
import contextlib
import os
import signal
import threading

from ..config import Settings
from ..targets import SECRET_ENV, SECRET_SETTINGS

_env_lock = threading.Lock()


class ChildProcess(abc.ABC):
    """The parent's handle on one child: its pid, its channel's fd, an fd that becomes
    readable when it exits, the read ends of its stdout/stderr capture pipes."""

    pid: int
    fd: int
    sentinel: int
    stdout_fd: int
    stderr_fd: int

    @abc.abstractmethod
    def exitcode(self) -> int | None:
        """Its exit code once it has exited (negative: killed by that signal)."""

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
        CUDA_VISIBLE_DEVICES, WORKER_CHILD_INDEX); `checks`: run the fitness checks."""

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
