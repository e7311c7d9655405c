"""child_main(): the first code a child runs. Process hygiene, then the handler's module.

The module runs once per child; when it calls start() (worker's, or the official runpod
SDK's, redirected) the job loop begins inside that call, exactly where the SDK would block.
"""
from __future__ import annotations

import atexit
import importlib
import os
import pkgutil
import runpy
import sys
import traceback

from .. import hardening
from .. import protocol as P
from ..config import Settings, SettingsError
from ..targets import SECRET_ENV, ChildSpec, ModuleTarget, ScriptTarget, ValueTarget, warm_key
from . import (code_files, descendants, fork_safety, forkserver_door, joblog, runpod_compat,
               sdk_hooks, seeds, warm_import)
from .fitness_run import Unfit
from .handlers import Interrupted
from .runtime import ChildRuntime



def run_target(target, runtime: ChildRuntime) -> dict:
    """Run the handler's code; returns the module's namespace (start() may never return
    from here: the job loop runs inside it)."""
    if isinstance(target, ScriptTarget):
        sys.argv = [target.path, *target.argv]
        if pkgutil.get_importer(target.path) is None:    # a file (runpy puts an archive
            # or a folder on sys.path itself); Python puts the script's real folder first,
            # its __file__ stays the path as given (a symlink's, not its target's)
            sys.path.insert(0, os.path.dirname(os.path.realpath(target.path)))
        return runpy.run_path(target.path, run_name="__main__")
    if isinstance(target, ModuleTarget):
        sys.argv = [target.name, *target.argv]
        return vars(importlib.import_module(target.name))
    if isinstance(target, ValueTarget):
        runtime.serve(dict(target.config))
        return {}
    raise TypeError(f"unknown target {target!r}")


def warm_state(target) -> "warm_import.Warm | None":
    """The forkserver's import of this very target, if it made one (WORKER_WARM_REFRESH)."""
    state = warm_import.STATE
    key = warm_key(target)
    return state if state is not None and key is not None and state.key == key else None


def _serve_warm(warm, target, runtime: ChildRuntime) -> dict:
    """Serve the config the warm import recorded (the module's body already ran, in the
    forkserver, up to its start() call)."""
    if warm.torch_threads is not None:
        sys.modules["torch"].set_num_threads(warm.torch_threads)
    if warm.config is not None:
        runtime.serve(warm.config)
    else:
        serve_module_handler(warm.namespace, target, runtime)
    return warm.namespace


def serve_module_handler(namespace, target, runtime: ChildRuntime) -> None:
    """A module that never called start(): serve its `handler` function, as the SDK's
    users expect of a file that only defines one."""
    handler = namespace.get("handler") if isinstance(namespace, dict) else None
    if not callable(handler):
        raise RuntimeError(f"{target.describe()} finished without calling "
                           "start({'handler': ...}) and defines no handler function")
    print(f"gpu-worker: {target.describe()} did not call start(); serving its `handler` "
          "function", file=sys.stderr)
    runtime.serve({"handler": handler})


def child_main(spec: ChildSpec) -> None:
    sdk_hooks.child_started()
    preloaded = [m for m in spec.preload if m in sys.modules]
    try:
        os.setpgid(0, 0)  # lead our own group: a stop kills grandchildren too
    except OSError:
        pass
    descendants.install()   # and the ones that leave it stay below us, to end with us
    _capture_output(spec.stdout.fileno(), spec.stderr.fileno())
    spec.stdout.close()
    spec.stderr.close()
    _stdin_back()
    joblog.install()
    settings = Settings.from_dict(spec.settings)
    # The parent started our process without its secrets (spawner.py); the ones the user
    # asked to pass come in the spec, into os.environ only.
    for name in SECRET_ENV:
        os.environ.pop(name, None)
    fork_safety.restore()
    forkserver_door.restore()
    os.environ.update(spec.env)
    _enter(spec.cwd)
    _allow_own_children()
    # No process the worker started may be read by user code (hardening.py): none of the
    # capabilities that read a non-dumpable process (a forkserver's child has dropped
    # them already: the forkserver did; a spawned one drops them here).
    hardening.drop_readers(settings.child_keep_caps)

    # Exit hooks registered before the module runs are the forkserver's (its preloads,
    # multiprocess); the ones to run at the end are the module's own.
    atexit._clear()
    runtime = ChildRuntime(spec.control.fileno(), settings, preloaded)
    runtime.checks = spec.checks
    runtime.activate()
    runtime.watch(spec.lifeline.fileno())
    runpod_compat.install()
    warm = warm_state(spec.target)
    for func, args, kwargs in warm.exit_hooks if warm is not None else ():
        atexit.register(func, *args, **kwargs)     # the module's own, from its import
    if warm is not None and warm.refused:
        runtime.send(P.WarmRefused(warm.refused))      # the parent restarts the forkserver
        os._exit(0)
    # As random as a fresh interpreter: what the forkserver loaded is reseeded, but a seed
    # the warm import set on purpose stands (seeds.py).
    seeds.reseed(warm.seeded if warm else frozenset(), warm.random_state if warm else None)
    code = 0
    try:
        if spec.forked and "worker.child.forkserver_rights" not in sys.modules:
            # multiprocess skips a preload it cannot import: fail closed, never serve from
            # a forkserver that ran the user's preloads with the worker's rights.
            raise RuntimeError("the forkserver did not drop to a child's rights (its first "
                               "imports failed; see its lines above): not serving from it")
        if settings.child_user:
            _become(settings.child_user)
        hardening.set_dumpable(True)       # the forkserver is not; this child may be
        # After set_dumpable: a non-dumpable process's /proc files are root's, and a child
        # that runs as another user could not write its own score.
        _raise_oom_score(settings.child_oom_score_adj)
        fork_safety.check(spec.preload)
        if settings.reload:
            code_files.fresh_imports()
        if warm is not None:
            namespace = _serve_warm(warm, spec.target, runtime)
        else:
            namespace = run_target(spec.target, runtime)
        if not runtime.served:
            serve_module_handler(namespace, spec.target, runtime)
    except Interrupted:
        pass
    except BaseException as exc:  # noqa: B902 - everything here is a setup failure
        code = 1
        if runtime.served:
            traceback.print_exc()
        else:
            _report_setup_failure(runtime, exc)
    finally:
        _run_exit_hooks()
    # Skip the rest of interpreter teardown: user threads must not keep a stopping child
    # alive.
    os._exit(code)


def _enter(cwd: str) -> None:
    """The parent's folder. A forkserver's child is usually there already (the forkserver
    started in it), which matters when it runs as WORKER_CHILD_USER: a folder that user
    may not enter can still be the one it stays in."""
    try:
        if os.getcwd() == cwd:
            return
    except OSError:
        pass
    os.chdir(cwd)


def _become(user: str) -> None:
    try:
        hardening.become(user)
    except Exception as exc:      # noqa: BLE001 - a setup failure that says why
        raise RuntimeError(f"cannot run as WORKER_CHILD_USER={user!r}: "
                           f"{type(exc).__name__}: {exc}") from None


def _run_exit_hooks() -> None:
    """The module's atexit hooks (a cache sync, a temp-dir cleanup), as a normal exit
    would run them — after a stop, or a setup failure; not after a crash or a kill. The
    parent's stop grace bounds how long they may take."""
    try:
        atexit._run_exitfuncs()
    except BaseException:      # noqa: B902 - a second stop signal lands here
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _report_setup_failure(runtime: ChildRuntime, exc: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, SystemExit):
        message = f"the handler module called sys.exit({exc.code!r}) during setup"
    elif isinstance(exc, (Unfit, fork_safety.CudaBeforeFork, SettingsError)):
        message, tb = str(exc), ""      # one clear line: the check and its reason
    else:
        message = f"{type(exc).__name__}: {exc}"
    try:
        runtime.send(P.SetupFailed(message, tb, code_files.report(exc)
                                   if runtime.settings.reload else None))
    except OSError:
        print(tb, file=sys.stderr)


def _capture_output(out_fd: int, err_fd: int) -> None:
    """Point fds 1 and 2 at the parent's capture pipes, so writes from C code and from
    subprocesses are captured too. The control channel is a separate fd."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass


def _stdin_back() -> None:
    """multiprocessing points sys.stdin at /dev/null in a new process, but fd 0 is still
    the worker's stdin (the parent never reads it): the script reads it, as under
    `python script.py`. Every child shares it, as processes share a terminal."""
    try:
        os.fstat(0)
    except OSError:
        return
    old = sys.stdin
    try:
        sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
    except (OSError, ValueError):
        return
    try:
        if old is not None and old.fileno() != 0:
            os.close(old.fileno())     # multiprocessing's /dev/null
    except (OSError, ValueError):
        pass


def _raise_oom_score(by: int) -> None:
    """Be the OOM killer's pick before the parent and the forkserver: their jobs are
    failed and the child replaced, theirs would end the worker. Raising needs no
    privilege; lowering it again does."""
    if by <= 0:
        return
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            now = int(f.read())
            f.seek(0)
            f.write(str(min(1000, now + by)))
    except (OSError, ValueError):
        pass


def _allow_own_children() -> None:
    # multiprocess marks its children daemonic (so a dying parent cleans them up), which
    # would forbid the handler from starting a multiprocess pool of its own.
    try:
        import multiprocess
        multiprocess.current_process()._config["daemon"] = False
    except Exception:
        pass
