"""The forkserver's last preload: freeze what it holds, so that the garbage collector in
each child never visits (and so never copies) the pages of the forkserver's objects:
the imports, and with WORKER_WARM_REFRESH the handler module and its weights."""
import gc

gc.collect()
gc.freeze()
