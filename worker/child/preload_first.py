"""The forkserver's first import, ahead of WORKER_PRELOAD (spawner.py); never imported by
the parent. A preloaded module that asks torch whether CUDA is available would initialise
CUDA in the forkserver, and no child forked from it could use CUDA again ("Cannot
re-initialize CUDA in forked subprocess"). With PYTORCH_NVML_BASED_CUDA_CHECK=1 torch asks
NVML instead, which leaves no CUDA state behind; each child takes the variable back
(fork_safety.restore) so the handler's own calls behave as usual."""
import ctypes
import os

try:      # the launcher is not dumpable: its /proc files need CAP_SYS_PTRACE (hardening.py)
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)      # PR_SET_DUMPABLE, 0
except (OSError, AttributeError):
    pass

VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"
SET_HERE = VAR not in os.environ
if SET_HERE:
    os.environ[VAR] = "1"
