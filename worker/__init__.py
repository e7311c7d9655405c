"""gpu-worker: RunPod-style handlers in a supervised child process.

Importing this package stays light: no torch, no NVML, no multiprocessing machinery.
When a handler script run as `python handler.py` imports it at its top, the process hands
over to the worker's entry point right here, before the script's own code runs
(handover.py).
"""
from . import safe_path as _safe_path

_safe_path.ensure()       # before any import a file beside the handler could shadow

from . import handover as _handover  # noqa: E402

_handover.hand_over_early()

from . import serverless  # noqa: E402
from .api import progress_update, start  # noqa: E402
from .serverless.logger import RunPodLogger  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["start", "progress_update", "serverless", "RunPodLogger", "__version__"]
