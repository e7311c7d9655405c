"""`python -m worker …` puts the working folder — usually the handler's — first on the
import path, ahead of the standard library, in the process that holds the secrets: a
`json.py` or `multiprocess.py` shipped beside the handler would run in the parent, and in
the forkserver before it takes a child's rights. So the worker re-executes itself at once
with -P (Python 3.11+: no folder put first), before it imports anything that could be
shadowed; the forkserver inherits the flag. The folder comes back where user code runs
with a child's rights: first on each child's path (mp_launcher) and on the forkserver's
once it has taken them (forkserver_rights). Python 3.10 has no -P: there, the folder
stays (and the README says so).

Only `os` and `sys` here: both are built into the interpreter, never read from a folder.
"""
import os
import sys

ENTRIES = (["-m", "worker"], ["-m", "worker.__main__"])


def ensure() -> None:
    """Called first by `import worker`: re-execute `python -m worker` with -P."""
    if sys.flags.safe_path if hasattr(sys.flags, "safe_path") else True:
        return
    argv = getattr(sys, "orig_argv", None) or []
    at = 1
    while at < len(argv) - 1 and argv[at:at + 2] not in ENTRIES:
        if not argv[at].startswith("-") or argv[at] in ("-c", "-m"):
            return                       # a script, -c or another module: not ours
        at += 2 if argv[at] in ("-X", "-W") else 1
    if argv[at:at + 2] not in ENTRIES:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:       # noqa: BLE001
            pass
    os.execv(sys.executable, [sys.executable, "-P", *argv[1:]])
