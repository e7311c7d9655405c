"""The forkserver's first import, ahead of everything else it imports (mp_launcher.py);
never imported by the parent.

1. It is not dumpable: its /proc files need CAP_SYS_PTRACE (hardening.py).
2. Its door: only the worker may ask it for a process (forkserver_door.py).
3. No CUDA state from the preloads: a preloaded module that asks torch whether CUDA is
   available would initialise CUDA here, and no child forked from it could use CUDA again
   ("Cannot re-initialize CUDA in forked subprocess"). With PYTORCH_NVML_BASED_CUDA_CHECK=1
   torch asks NVML instead, which leaves no CUDA state behind; each child takes the
   variable back (fork_safety.restore) so the handler's own calls behave as usual.

Its rights become a child's later, in forkserver_rights.py: after the worker's own
modules, before any module the user named."""
import os

from .. import hardening
from . import forkserver_door

hardening.set_dumpable(False)
forkserver_door.guard()

VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"
SET_HERE = VAR not in os.environ
if SET_HERE:
    os.environ[VAR] = "1"
