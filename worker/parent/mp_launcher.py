"""The launcher on multiprocess: a forkserver with a preload list (fast respawn), or spawn.

Never plain fork: the parent has threads, and a child forked from it would inherit them
half-way. The forkserver is a clean single-threaded process started once; each child is a
fork of it, so modules it preloaded (e.g. torch) are already imported in every child.

Every use of multiprocess's internals in the parent is in this module (tests/
test_structure.py checks it), and each is checked when the first launcher is made:
present and behaving, or one log line that says what is lost and the fallback.
setup.cfg pins the range these were tested with.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading

import multiprocess
from multiprocess import forkserver, process as mp_process, resource_tracker, \
    spawn as mp_spawn, util as mp_util

from .. import hardening, procfs, safe_path
from ..child.boot import child_main
from ..config import Settings
from ..targets import (AUTO_PRELOAD_ENV, RIGHTS_ENV, WARM_ENV, ChildSpec, ValueTarget,
                       child_path, warm_key)
from . import reaper
from .launcher import (ALIVE, EXITED, PENDING, ChildProcess, ExitWatch, Launcher,
                       child_settings, end_tree, grow_buffers, headroom, passed_env,
                       readable, without_secrets)

log = logging.getLogger("worker")

CHILD_NAME = "gpu-worker-child"


# --- multiprocess internals, checked --------------------------------------------------------

def _server():
    """The process's one ForkServer, if it has the parts used here."""
    server = getattr(forkserver, "_forkserver", None)
    for name in ("_forkserver_pid", "_preload_modules", "_stop", "ensure_running"):
        if not hasattr(server, name):
            return None
    if not callable(server._stop) or not (server._forkserver_pid is None
                                          or isinstance(server._forkserver_pid, int)):
        return None
    return server


def _check_preparation() -> bool:
    try:
        data = mp_spawn.get_preparation_data(CHILD_NAME)
    except Exception:      # noqa: BLE001 - any failure means it is not what we know
        return False
    return isinstance(data, dict)


def _check_tracker() -> bool:
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    return hasattr(tracker, "_fd") and hasattr(getattr(tracker, "_lock", None), "__enter__")


def _check_registry() -> bool:
    return isinstance(getattr(mp_process, "_children", None), set)


def _check_door() -> bool:
    """Does the forkserver's main() make its listener from its module's `socket` name, as
    child/forkserver_door.py guards it?"""
    main = getattr(forkserver, "main", None)
    names = set(getattr(getattr(main, "__code__", None), "co_names", ()))
    return getattr(forkserver, "socket", None) is socket and \
        {"socket", "AF_UNIX", "accept"} <= names


FEATURES = {   # name: (check, what is lost without it)
    "forkserver control": (lambda: _server() is not None,
                           "children start with spawn (WORKER_PRELOAD and warm refresh "
                           "do nothing; a refresh costs an interpreter start)"),
    "preparation data": (_check_preparation,
                         "each child runs the parent's __main__ script again"),
    "resource tracker": (_check_tracker,
                         "multiprocess's resource tracker process runs (one more interpreter)"),
    "forkserver door": (_check_door,
                        "children start with spawn (the forkserver would fork a process "
                        "for any process that connects to it)"),
    "child registry": (_check_registry,
                       "multiprocess may read a child's exit report first: its code can "
                       "read 255 after the forkserver died"),
}
_missing: set | None = None


def missing_features() -> set:
    """The internals that are not as this module expects, checked once (one line each)."""
    global _missing
    if _missing is None:
        _missing = set()
        for name, (check, lost) in FEATURES.items():
            if not check():
                _missing.add(name)
                log.warning("multiprocess %s does not have the %s this worker was tested "
                            "with: %s", getattr(multiprocess, "__version__", "?"), name, lost)
        if "preparation data" not in _missing:
            mp_spawn.get_preparation_data = _without_main
        mp_util._args_from_interpreter_flags = _safe_path_flags
    return _missing


_preparation_data = mp_spawn.get_preparation_data


def _without_main(name: str) -> dict:
    """multiprocess re-runs the parent's __main__ script in every child so that objects
    defined there unpickle. Ours run worker.child.entry on a target named by path or
    module, never the parent's script: rerunning it (a bench, or a program that embeds
    the supervisor) cost a refresh its whole import, and ran its module-level code again."""
    data = _preparation_data(name)
    if name == CHILD_NAME:
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    if name.startswith(CHILD_NAME):
        data["sys_path"] = child_path(data.get("sys_path", sys.path))
    return data


_interpreter_flags = mp_util._args_from_interpreter_flags


def _safe_path_flags() -> list:
    """The flags multiprocess starts an interpreter with (the forkserver, a spawned
    child), -P added whatever the worker was started with (the `worker` command has no
    -P): a `-c` interpreter would put the working folder first on its path, where a file
    beside the handler runs before the forkserver drops to a child's rights
    (safe_path.py)."""
    flags = _interpreter_flags()
    return flags if "-P" in flags or not safe_path.usable() else [*flags, "-P"]


def _no_resource_tracker() -> None:
    """multiprocess starts a resource tracker process (a Python interpreter) for named
    semaphores and shared memory that a process might leak. Neither the worker nor its
    children use multiprocess's: the tracker's pipe is /dev/null instead. A handler that
    uses multiprocessing (the standard library) gets that library's own tracker."""
    if "resource tracker" in missing_features():
        return
    tracker = resource_tracker._resource_tracker
    with tracker._lock:
        if tracker._fd is None:
            tracker._fd = os.open(os.devnull, os.O_WRONLY)


def template_pid() -> int | None:
    """The forkserver's pid, if one runs."""
    server = _server()
    return None if server is None else server._forkserver_pid


_live: set = set()             # pids of the children started here and not yet released
_start_lock = threading.Lock()  # one start at a time: one forkserver serves the process


def live_children() -> int:
    """Children started here that the parent has not released (the forkserver's children
    are not multiprocess's: it never hears of them after their start)."""
    return len(_live)


def stop_template() -> None:
    """Stop the forkserver (with no child of it alive: it would wait for them), so the
    next child starts a fresh one, with the environment of that moment."""
    server = _server()
    if server is not None and server._forkserver_pid is not None:
        if _server_key[0] is not None:
            end_tree(server._forkserver_pid)
        server._stop()


_server_key: tuple = (None, None)   # the warm target and the rights of the forkserver now


# --- the launcher ----------------------------------------------------------------------------

class MpChild(ChildProcess):
    """A child started by multiprocess: its Process, the parent's ends of its pipes and
    its exit watch. A forkserver's child is the forkserver's to reap: its code comes in
    the forkserver's report (the Process's sentinel), or from the kernel once the parent
    has adopted it (the forkserver died, reaper.py); a spawned one is the parent's own."""

    def __init__(self, process, control, stdout, stderr, lifeline, forked: bool):
        self.process = process
        self.pid = process.pid
        self.control = control      # Connection, parent's end; we use its fd directly
        self.stdout = stdout        # Connection, read end
        self.stderr = stderr
        self.lifeline = lifeline    # Connection, write end: closing it tells the child
        self.fd = control.fileno()
        self.watch = ExitWatch(self.pid)
        self.exit_fd = self.watch.fd
        self.report_fd = process.sentinel
        self.stdout_fd = stdout.fileno()
        self.stderr_fd = stderr.fileno()
        self._forked = forked
        self._code: tuple | None = None      # (code,) once known
        self._report_eof = False

    def poll_exit(self) -> tuple:
        if self._code is not None:
            return EXITED, self._code[0]
        if not self._forked:
            code = self.process.exitcode        # multiprocess reaps its spawned children
            if code is None:
                return (PENDING if self.watch.gone() else ALIVE), None
        else:
            try:
                code = self.watch.reap()        # adopted: the forkserver died
            except ChildProcessError:           # still the forkserver's: it reports
                if not self.watch.gone():
                    return ALIVE, None
                code = self._report()
                if code is None:
                    return PENDING, None
            else:
                if code is None:
                    return ALIVE, None
        self._code = (code,)
        return EXITED, code

    def _report(self) -> int | None:
        if self._report_eof or not readable(self.report_fd):
            return None
        try:
            return forkserver.read_signed(self.report_fd)
        except (EOFError, OSError):            # it died before it could report
            self._report_eof = True
            return None

    def report_closed(self) -> bool:
        if self._forked and not self._report_eof and readable(self.report_fd) \
                and not self.watch.gone():
            self._report_eof = True             # nothing but EOF comes while it lives
            return True
        return False

    def give_up_code(self) -> None:
        if self._code is None:
            self._code = (None,)

    def release(self) -> None:
        self.watch.close()
        reaper.released(self.pid)
        _live.discard(self.pid)
        for conn in (self.control, self.lifeline):
            try:
                conn.close()
            except OSError:
                pass
        popen = getattr(self.process, "_popen", None)
        if self._forked and popen is not None and popen.returncode is None:
            # Its code is known here (or never will be): the Popen must not wait for the
            # forkserver's report to close its fds.
            code = self._code[0] if self._code is not None else None
            popen.returncode = 255 if code is None else code
        try:
            self.process.join(0)
            self.process.close()
        except (ValueError, AssertionError):
            pass


class MpLauncher(Launcher):
    def __init__(self, method: str = "forkserver", preload: tuple = (), warm=None):
        """`warm`: the target the forkserver should import itself (WORKER_WARM_REFRESH)."""
        missing = missing_features()
        self.preload = list(preload)
        self.guarded: list = []         # reload mode's choice: imported one by one, guarded
        self.method = method
        self.warm_key = None
        self.warm_status = "off"
        self.losses = 0                 # templates that died or were declared dead
        self.last_loss: str | None = None
        self._served: int | None = None     # the template pid that last started a child
        self._lost_pid: int | None = None   # the template already counted as lost
        if method not in ("forkserver", "spawn"):
            raise ValueError(f"start method must be forkserver or spawn, not {method!r}")
        if method == "forkserver" and {"forkserver control", "forkserver door"} & missing:
            self.method = "spawn"
        if self.method == "forkserver":
            try:
                self.ctx = multiprocess.get_context("forkserver")
            except ValueError:
                log.warning("forkserver is not available here; children start with spawn")
                self.method = "spawn"
        if self.method == "spawn":
            self.ctx = multiprocess.get_context("spawn")
        if warm is not None:
            self.warm_key = warm_key(warm)
            self.warm_status = "on" if self.warm_key and self.method == "forkserver" else (
                "off: needs the forkserver and a handler file or module")
            if self.method != "forkserver":
                self.warm_key = None

    def warm_off(self, reason: str) -> None:
        """Children start cold from now on (the next start restarts the forkserver)."""
        self.warm_key = None
        self.warm_status = f"refused: {reason}"

    def health(self) -> dict:
        pid = template_pid() if self.method == "forkserver" else None
        if self.method != "forkserver":
            state = "none: each child is a fresh interpreter"
        elif pid is None:
            state = "not started"
        else:
            try:
                stat = procfs.stat(pid)
            except OSError:
                stat = ["?"]
            state = "gone" if stat is None or stat[0] in "ZX" else \
                "stopped" if stat[0] in "Tt" else "unknown" if stat[0] == "?" else "running"
        return {"method": self.method, "template": state, "template_pid": pid,
                "warm_refresh": self.warm_status, "losses": self.losses,
                "last_loss": self.last_loss}

    def start_bound(self, settings: Settings) -> float | None:
        """A start through a template that has answered before is a fork: launch_timeout.
        The first through a new one waits for its imports (the warm one imports the
        handler module): setup_timeout."""
        pid = template_pid() if self.method == "forkserver" else None
        if self.method == "forkserver" and (pid is None or pid != self._served):
            return settings.setup_timeout or None
        return settings.launch_timeout or None

    def declare_dead(self, reason: str) -> None:
        """SIGKILL the template (stopped or hung, it still dies): the next start finds it
        dead and makes a new one; a start blocked on it gets EOF. Its children live on."""
        pid = template_pid()
        if pid is not None:
            self._lost(pid, reason)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def template_lost(self, reason: str) -> None:
        pid = template_pid()
        if pid is not None:
            self._lost(pid, reason)

    def _lost(self, pid: int, reason: str) -> None:
        self._served = None                 # the next start makes a new one: its imports
        if pid == self._lost_pid:
            return                          # once per template
        self._lost_pid = pid
        self.losses += 1
        self.last_loss = reason
        log.error("the forkserver (pid %d) %s; the next child starts from a new one, and "
                  "the children it started go on", pid, reason)

    def _modules(self) -> list:
        # preload_first keeps the preloads from initialising CUDA there; the warm import
        # comes last, after everything it may use.
        # forkserver_rights comes after the worker's own modules, before the user's.
        return ["worker.child.preload_first", "worker.child.entry",
                "worker.child.forkserver_rights", *self.preload,
                *(["worker.child.preload_auto"] if self.guarded else []),
                *(["worker.child.warm_preload"] if self.warm_key else [])]

    def _ensure_server(self, rights: str) -> None:
        """The forkserver, running with this launcher's preload, warm target and the
        children's rights. One runs per process: restart it for another list, but only
        with no child alive (children hold it open, and stopping it would wait for them)."""
        global _server_key
        server = _server()
        modules = self._modules()
        key = (self.warm_key, rights)
        if server._forkserver_pid is not None and (
                server._preload_modules != modules or _server_key != key):
            if _live:
                log.warning("the forkserver already runs with preload %s; keeping it",
                            server._preload_modules)
                return
            stop_template()
        if server._forkserver_pid is None:
            _no_resource_tracker()
            self.ctx.set_forkserver_preload(modules)
            server.ensure_running()
            reaper.own(server._forkserver_pid)      # under starting(): never adopted
            _server_key = key

    def start(self, target, settings: Settings, checks: bool = False,
              env: dict | None = None) -> MpChild:
        """Start a child. `env`: variables its environment gets (its CUDA_VISIBLE_DEVICES):
        a forkserver's children inherit the forkserver's environment, so they travel in
        the spec."""
        ctx = self.ctx
        opened: list = []
        try:
            control, child_control = ctx.Pipe(duplex=True)
            opened += [control, child_control]
            for conn in (control, child_control):   # big jobs cross in fewer round trips
                grow_buffers(conn.fileno())
            out_r, out_w = ctx.Pipe(duplex=False)
            opened += [out_r, out_w]
            err_r, err_w = ctx.Pipe(duplex=False)
            opened += [err_r, err_w]
            life_r, life_w = ctx.Pipe(duplex=False)
            opened += [life_r, life_w]
            spec = ChildSpec(target, child_settings(settings), os.getcwd(),
                             [*self.preload, *self.guarded],
                             passed_env(settings, env), child_control, out_w, err_w, life_r,
                             checks, self.method == "forkserver")
            # A handler given as a value may come from the parent's __main__: keep the fixup.
            name = f"{CHILD_NAME}-value" if isinstance(target, ValueTarget) else CHILD_NAME
            process = ctx.Process(target=child_main, args=(spec,), name=name, daemon=True)
            if settings.child_user:        # one clear setup failure, before anything runs
                hardening.check_user(settings.child_user)
            # What a forkserver starting now reads, before it imports anything.
            rights = json.dumps({"keep": list(settings.child_keep_caps),
                                 "user": settings.child_user})
            template_env = {RIGHTS_ENV: rights}
            if self.warm_key:
                template_env[WARM_ENV] = self.warm_key
            if self.guarded:
                template_env[AUTO_PRELOAD_ENV] = ",".join(self.guarded)
            forked = self.method == "forkserver"
            with _start_lock, reaper.starting(), without_secrets(template_env):
                headroom()
                if forked:
                    self._ensure_server(rights)
                process.start()
                reaper.watched(process.pid)
                if forked:
                    # Its exit report is ours to read: multiprocess must not poll it.
                    getattr(mp_process, "_children", set()).discard(process)
                    self._served = template_pid()
                    reaper.own(self._served)       # restarted by the start itself
        except BaseException:
            for conn in opened:         # nothing of a start that failed stays open
                conn.close()
            raise
        for conn in (child_control, out_w, err_w, life_r):
            conn.close()
        _live.add(process.pid)
        return MpChild(process, control, out_r, err_r, life_w, forked)
