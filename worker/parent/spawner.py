"""Starting child processes: a forkserver with a preload list (fast respawn), or spawn.

Never plain fork: the parent has threads, and a child forked from it would inherit them
half-way. The forkserver is a clean single-threaded process started once; each child is a
fork of it, so modules it preloaded (e.g. torch) are already imported in every child.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading

import multiprocess
import psutil
from multiprocess import forkserver, resource_tracker, spawn as mp_spawn

from ..child.boot import child_main
from ..config import Settings
from ..targets import SECRET_ENV, SECRET_SETTINGS, WARM_ENV, ChildSpec, ValueTarget, warm_key

log = logging.getLogger("worker")
_env_lock = threading.Lock()


@contextlib.contextmanager
def _without_secrets(extra: dict | None = None):
    """Start processes without the secrets in their exec environment: the forkserver (and
    so every child forked from it) or a spawned interpreter would otherwise carry them in
    /proc/self/environ, whatever the child later removes from os.environ. `extra` is set
    for the while (what a forkserver starting now must read at its start)."""
    with _env_lock:
        saved = {name: os.environ.pop(name) for name in SECRET_ENV if name in os.environ}
        os.environ.update(extra or {})
        try:
            yield
        finally:
            for name in extra or {}:
                os.environ.pop(name, None)
            os.environ.update(saved)


def _grow_buffers(fd: int, size: int = 4 * 2**20) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)   # the kernel caps it at its max
    except OSError:
        pass
    finally:
        sock.close()


CHILD_NAME = "gpu-worker-child"
_preparation_data = mp_spawn.get_preparation_data


def _without_main(name: str) -> dict:
    """multiprocess re-runs the parent's __main__ script in every child so that objects
    defined there unpickle. Ours run worker.child.entry on a target named by path or
    module, never the parent's script: rerunning it (a bench, or a program that embeds
    the supervisor) cost 37 ms per refresh, and ran its module-level code again."""
    data = _preparation_data(name)
    if name == CHILD_NAME:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


mp_spawn.get_preparation_data = _without_main


class ChildProcess:
    """The parent's handle on one child: its process, channel and capture pipes."""

    def __init__(self, process, control, stdout, stderr, lifeline):
        self.process = process
        self.pid: int = process.pid
        self.control = control      # Connection, parent's end; we use its fd directly
        self.stdout = stdout        # Connection, read end
        self.stderr = stderr
        self.lifeline = lifeline    # Connection, write end: closing it tells the child

    @property
    def fd(self) -> int:
        return self.control.fileno()

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    def exitcode(self):
        return self.process.exitcode

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group (or the child alone before it has made
        its group)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        except PermissionError:
            pass

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """After exit: kill what is left of the group and release our ends."""
        self.signal_group(signal.SIGKILL)
        for conn in (self.control, self.lifeline):
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.process.join(0)
            self.process.close()
        except (ValueError, AssertionError):
            pass


class Spawner:
    def __init__(self, method: str = "forkserver", preload: tuple = (), warm=None):
        """`warm`: the target the forkserver should import itself (WORKER_WARM_REFRESH)."""
        self.preload = list(preload)
        self.method = method
        self.warm_key = None
        self.warm_status = "off"
        if method == "forkserver":
            try:
                self.ctx = multiprocess.get_context("forkserver")
            except ValueError:
                log.warning("forkserver is not available here; children start with spawn")
                self.method = "spawn"
        if self.method != "forkserver":
            if self.method != "spawn":
                raise ValueError(f"start method must be forkserver or spawn, not {method!r}")
            self.ctx = multiprocess.get_context("spawn")
        if warm is not None:
            self.warm_key = warm_key(warm)
            self.warm_status = "on" if self.warm_key and self.method == "forkserver" else (
                "off: needs the forkserver and a handler file or module")
            if self.method != "forkserver":
                self.warm_key = None

    def warm_off(self, reason: str) -> None:
        """Children start cold from now on (the next spawn restarts the forkserver)."""
        self.warm_key = None
        self.warm_status = f"refused: {reason}"

    def _modules(self) -> list:
        # preload_first keeps the preloads from initialising CUDA there; the warm import
        # comes last, after everything it may use.
        return ["worker.child.preload_first", "worker.child.entry", *self.preload,
                *(["worker.child.warm_preload"] if self.warm_key else [])]

    def _ensure_server(self) -> None:
        """The forkserver, running with this spawner's preload and warm target. One runs
        per process: restart it for another list, but only with no child alive (children
        hold it open, and stopping it would wait for them)."""
        global _server_warm_key
        server = forkserver._forkserver
        modules = self._modules()
        if server._forkserver_pid is not None and (
                server._preload_modules != modules or _server_warm_key != self.warm_key):
            if multiprocess.active_children():
                log.warning("the forkserver already runs with preload %s; keeping it",
                            server._preload_modules)
                return
            if _server_warm_key is not None:
                _end_warm_server(server._forkserver_pid)
            server._stop()
        if server._forkserver_pid is None:
            _no_resource_tracker()
            self.ctx.set_forkserver_preload(modules)
            server.ensure_running()
            _server_warm_key = self.warm_key

    def spawn(self, target, settings: Settings, checks: bool = False,
              env: dict | None = None) -> ChildProcess:
        """Start a child. `env`: variables its environment gets (its CUDA_VISIBLE_DEVICES):
        a forkserver's children inherit the forkserver's environment, so they travel in
        the spec."""
        ctx = self.ctx
        control, child_control = ctx.Pipe(duplex=True)
        for conn in (control, child_control):   # big jobs cross in fewer round trips
            _grow_buffers(conn.fileno())
        out_r, out_w = ctx.Pipe(duplex=False)
        err_r, err_w = ctx.Pipe(duplex=False)
        life_r, life_w = ctx.Pipe(duplex=False)
        passed = {name: os.environ[name] for name in settings.child_env_pass
                  if name in SECRET_ENV and name in os.environ}
        passed.update(env or {})
        given = {k: v for k, v in settings.to_dict().items() if k not in SECRET_SETTINGS}
        spec = ChildSpec(target, given, os.getcwd(), self.preload, passed,
                         child_control, out_w, err_w, life_r, checks)
        # A handler given as a value may come from the parent's __main__: keep the fixup.
        name = f"{CHILD_NAME}-value" if isinstance(target, ValueTarget) else CHILD_NAME
        process = ctx.Process(target=child_main, args=(spec,), name=name, daemon=True)
        warm_env = {WARM_ENV: self.warm_key} if self.warm_key else {}
        try:
            with _without_secrets(warm_env):
                if self.method == "forkserver":
                    self._ensure_server()
                process.start()
        finally:
            for conn in (child_control, out_w, err_w, life_r):
                conn.close()
        return ChildProcess(process, control, out_r, err_r, life_w)


_server_warm_key = None        # the warm target of the forkserver running now


def _no_resource_tracker() -> None:
    """multiprocess starts a resource tracker process (a Python interpreter, 11 MB of PSS)
    for named semaphores and shared memory that a process might leak. Neither the worker
    nor its children use multiprocess's: the tracker's pipe is /dev/null instead. A handler
    that uses multiprocessing (the standard library) gets that library's own tracker."""
    tracker = resource_tracker._resource_tracker
    with tracker._lock:
        if tracker._fd is None:
            tracker._fd = os.open(os.devnull, os.O_WRONLY)


def _end_warm_server(pid: int) -> None:
    """A forkserver that imported the handler may hold what its import started (a thread
    that would keep it from exiting, a process): end them and it, now that no child of
    ours is alive."""
    try:
        server = psutil.Process(pid)
        for proc in server.children(recursive=True):
            proc.kill()
        server.kill()
    except psutil.Error:
        pass
