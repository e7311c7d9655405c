"""`python -m worker …` puts the working folder — usually the handler's — first on the
import path, ahead of the standard library, in the process that holds the secrets: a
`json.py` or `multiprocess.py` shipped beside the handler would run in the parent, and in
the forkserver before it drops to a child's rights. So the worker re-executes itself at once
with -P (Python 3.11+: no folder put first), before it imports anything such a file could
shadow, and without the empty entries of PYTHONPATH (a trailing colon, as `ENV
PYTHONPATH=/app:$PYTHONPATH` leaves, means the working folder even under -P); the
forkserver inherits both. The folder comes back where user code runs with a child's
rights: first on each child's path (targets.child_path) and on the forkserver's once it
has dropped to them (forkserver_rights).

Not covered: a worker package that is not installed but lies in the working folder
(nothing to keep apart: the handler's files lie beside the worker's code), what runs
before `import worker` can run (a `-X frozen_modules=off` start reads the standard
library's start-up modules from the folder too), and Python 3.10 (no -P). Start an untrusted handler with `python -P -m worker` or the `worker` command, whose
first path entry is its own bin folder.

Only `os` and `sys` here: both are built into the interpreter, never read from a folder.
"""
import os
import sys

ENTRY = ("worker", "worker.__main__")


def _entry() -> bool:
    """Is this `python -m worker` locating its module (runpy's frame names it)?"""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in ("_get_module_details", "_run_module_as_main") and \
                frame.f_globals.get("__name__") == "runpy" and \
                frame.f_locals.get("mod_name") in ENTRY:
            return True
        frame = frame.f_back
    return False


def usable(*folders: str) -> bool:
    """Can -P be used: is the worker's own package outside `folders` (and the working
    folder), which -P keeps off the path? A checkout run in place is not; -P would lose
    the worker itself (and the handler's files lie beside the worker's code anyway)."""
    if not hasattr(sys.flags, "safe_path"):
        return False
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        cwd = os.getcwd()
    except OSError:
        return False
    return all(os.path.abspath(f) != home for f in (cwd, *folders))


def ensure() -> None:
    """Called first by `import worker`: re-execute `python -m worker` with -P."""
    if not _entry() or not usable():
        return
    path = os.environ.get("PYTHONPATH")
    clean = None if path is None else os.pathsep.join(p for p in path.split(os.pathsep) if p)
    if sys.flags.safe_path and clean == path:
        return
    env = dict(os.environ)
    if clean is not None:
        if clean:
            env["PYTHONPATH"] = clean
        else:
            env.pop("PYTHONPATH", None)
    argv = list(getattr(sys, "orig_argv", None) or [])
    if not argv:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:       # noqa: BLE001
            pass
    os.execve(sys.executable, [sys.executable, *([] if sys.flags.safe_path else ["-P"]),
                               *argv[1:]], env)
