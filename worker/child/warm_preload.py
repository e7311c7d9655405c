"""The forkserver's last preload with WORKER_WARM_REFRESH: import the handler module now,
after everything else the forkserver preloads (warm_import.py)."""
from . import warm_import

warm_import.load()
