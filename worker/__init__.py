"""gpu-worker: RunPod-style handlers in a supervised child process.

Importing this package stays light: no torch, no NVML, no multiprocessing machinery.
"""
from . import serverless
from .api import progress_update, start
from .version import __version__

__all__ = ["start", "progress_update", "serverless", "__version__"]
