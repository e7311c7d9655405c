"""The forkserver drops to a child's rights, after the worker's own modules (preload_first,
entry: trusted code, imported with the rights it started with) and before any module the
user named: WORKER_PRELOAD, reload mode's packages, the handler's warm import and what
it registers to run at fork or at exit all run in this process, so they get exactly what
a child gets (hardening.drop_child_rights: the capabilities a child drops, dropped but
WORKER_CHILD_KEEP_CAPS; WORKER_CHILD_USER). A child forked from here has them from its
first instruction.

The rights come in RIGHTS_ENV, set only while the forkserver starts. Where they cannot be
had, the forkserver says why and exits: it never imports user code with more than a
child's rights (the parent checks the user before it starts one, so this is a last
resort)."""
import json
import os
import sys

from .. import hardening
from ..targets import RIGHTS_ENV

try:
    _rights = json.loads(os.environ.pop(RIGHTS_ENV, "") or "{}")
    hardening.drop_child_rights(tuple(_rights.get("keep", ())), _rights.get("user", ""))
except BaseException as exc:     # noqa: B902 - fail closed
    os.write(2, f"gpu-worker: the forkserver could not drop to a child's rights "
                f"({type(exc).__name__}: {exc}); it exits\n".encode())
    os._exit(1)

# Started with -P (safe_path.py): the working folder joins the path only now, with a
# child's rights, for the modules the user named that live there.
if getattr(sys.flags, "safe_path", False):
    try:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
    except OSError:
        pass
