"""The forkserver's last preload: make what it holds cheap to share with its children.

gc.freeze(): the garbage collector in each child never visits (and so never copies) the
pages of the forkserver's objects (the imports, and with WORKER_WARM_REFRESH the handler
module and its weights). malloc_trim(0): the heap's free pages go back to the system
instead of being inherited, resident, by every child."""
import ctypes
import gc

gc.collect()
gc.freeze()
try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):       # not glibc
    pass
