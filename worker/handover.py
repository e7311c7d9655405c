"""`python script.py` → `python -m worker script.py`, before the script's own code runs.

A handler script becomes a supervised worker by re-executing itself under the worker's
entry point. Done at `start()` it is too late: the top level (imports, model loading,
subprocesses started in `main()`) has already run once, in a process that is about to be
replaced. So the first `import worker` checks: is this interpreter running a script
(`python script.py`), is that script still only importing (no function of it has run), and
does it call `serverless.start(...)`? Then the process re-executes at once, and the
script runs exactly once, as `__main__`, in the worker's child.

Import-light on purpose: it runs inside `import worker`, in a process whose path starts
with the script's folder: until the exec it imports nothing but `os` and `sys`.
"""
import os
import sys

# Where `start` may be imported from by name (`from worker import start`).
START_HOMES = {"worker", "worker.api", "worker.serverless", "runpod.serverless"}


def running_script() -> str | None:
    """The script this interpreter runs as __main__, as the user named it (`python
    script.py`, a symlink kept as the link, `python app.pyz`, `python folder/`), else None
    (`python -m …`, `-c`, a REPL, a notebook, a worker child)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not sys.argv or not sys.argv[0]:
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        # A zipapp or a folder run by path: its __main__.py, run by runpy, is the script
        # named in argv[0]; any other spec is `python -m`.
        if spec.name != "__main__" or os.path.basename(path) != "__main__.py":
            return None
        path = os.path.dirname(path)
    try:
        if not os.path.samefile(path, sys.argv[0]):
            return None
    except OSError:
        return None
    return os.path.abspath(sys.argv[0])


def script_source(script: str) -> bytes:
    """The code a script runs: the file, or the __main__.py of a zipapp or a folder.
    OSError when it cannot be read."""
    import zipfile                  # here: `import worker` stays light
    if os.path.isdir(script):
        script = os.path.join(script, "__main__.py")
    elif zipfile.is_zipfile(script):
        try:
            with zipfile.ZipFile(script) as archive:
                return archive.read("__main__.py")
        except (KeyError, zipfile.BadZipFile) as exc:
            raise OSError(str(exc)) from None
    with open(script, "rb") as f:
        return f.read()


def calls_start(source: bytes | str) -> bool:
    """Does this code call `….serverless.start(...)`, or `start(...)` imported from the
    worker or the SDK?"""
    import ast
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    names = {alias.asname or alias.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module in START_HOMES
             for alias in node.names if alias.name == "start"}
    # `import worker` (or `import worker as w`): worker.start(...)
    homes = {alias.asname or alias.name for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names
             if alias.name in START_HOMES and (alias.asname or "." not in alias.name)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "start":
            owner = func.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "serverless") or \
                    (isinstance(owner, ast.Name) and owner.id in ("serverless", *homes)):
                return True
        if isinstance(func, ast.Name) and func.id in names:
            return True
    return False


def _importing_from_top(frame) -> bool:
    """True when every frame below is a module body or the import machinery: the script
    is still at its imports, none of its functions has run."""
    while frame is not None:
        code = frame.f_code
        if code.co_name != "<module>" and not code.co_filename.startswith("<frozen"):
            return False
        frame = frame.f_back
    return True


HANDED_OVER = "GPU_WORKER_HANDED_OVER"      # set across the exec: after_handover() runs
_CHECK = ("import sys; from worker import handover as h; "
          "sys.exit(0 if h.calls_start(h.script_source(sys.argv[1])) else 3)")


def hand_over_early() -> None:
    """Called by `import worker`: re-execute now when the script is a handler script
    that has not run anything but imports.

    The script's folder is first on this process's path, and this process becomes the
    worker, secrets and all: so nothing here imports a module a file there could shadow
    (only `os` and `sys`, built in). Whether the script calls start() is asked of a
    separate interpreter started with -P; the rest of the hand-over runs after the exec
    (after_handover)."""
    script = running_script()
    if script is None or not _importing_from_top(sys._getframe(1)):
        return
    if _calls_start_elsewhere(script):
        reexec(script, sys.argv[1:])


def _calls_start_elsewhere(script: str) -> bool:
    """Asked of a -P interpreter (nothing beside the script is imported there); where -P
    cannot be used, or that one cannot answer, asked here as before."""
    from . import safe_path
    if safe_path.usable(os.path.dirname(os.path.realpath(script))):
        try:
            pid = os.posix_spawn(sys.executable, [sys.executable, "-P", "-c", _CHECK, script],
                                 os.environ)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code in (0, 3):
                return code == 0
        except (OSError, AttributeError):
            pass
    try:
        return calls_start(script_source(script))
    except OSError:
        return False


def reexec(script: str, args: list) -> None:
    """Replace this process with `python -P -m worker script args` (the same interpreter;
    -P: safe_path.py). Subprocesses this first run started, and a stdin it read, are seen
    to after the exec (after_handover), by code that no file beside the script can
    shadow."""
    from . import safe_path
    flags = _flags()
    if "-P" not in flags and safe_path.usable(os.path.dirname(os.path.realpath(script))):
        flags.append("-P")
    argv = [sys.executable, *flags, "-m", "worker", script, *args]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.environ[HANDED_OVER] = "1"
    os.execv(sys.executable, argv)


def _flags() -> list:
    """The interpreter's flags as given (sys.orig_argv up to the script), built in only."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable])
    flags, at = [], 1
    while at < len(argv) and argv[at].startswith("-") and argv[at] not in ("-", "-c", "-m"):
        with_value = argv[at] in ("-X", "-W", "--check-hash-based-pycs")
        flags += argv[at:at + 1 + with_value]
        at += 1 + with_value
    return flags


def after_handover() -> None:
    """In the worker, right after a hand-over's exec: what the first run left."""
    if os.environ.pop(HANDED_OVER, None):
        _end_own_children()
        _stdin_for_the_rerun()


def _stdin_for_the_rerun() -> None:
    """The script runs again from its start in the worker's child, which reads this
    process's stdin: a file is rewound, so it reads it whole again. A pipe cannot be:
    one already at its end was read before `import worker`, which is said."""
    import select
    import stat
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode):
        try:
            os.lseek(0, 0, os.SEEK_SET)
        except OSError:
            pass
        return
    if not stat.S_ISFIFO(mode):
        return
    try:
        import fcntl
        import struct
        import termios
        ready = select.select([0], [], [], 0)[0]
        left = struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return
    if ready and not left:
        print("gpu-worker: stdin (a pipe) is already at its end: the script read it before "
              "`import worker`, and it runs again in the worker process, where there is "
              "nothing left to read. Put `import worker` first, or run `python -m worker "
              f"{sys.argv[0]}`", file=sys.stderr)


def _end_own_children(grace: float = 5.0) -> None:
    import psutil
    children = psutil.Process().children(recursive=True)
    if not children:
        return
    print(f"gpu-worker: ending {len(children)} process(es) the script started before "
          "handing over; it starts them again in the worker", file=sys.stderr)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
