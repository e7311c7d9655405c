"""`import worker as runpod`, then `runpod.serverless.…`: the SDK's spelling, for handlers
that do not have (or want) the runpod package.

`start`, `progress_update` and `register_fitness_check` are here; `utils` (rp_validator,
rp_download, rp_cleanup, rp_cuda, rp_debugger, rp_upload) and `modules.rp_logger` load on
first use, so `import worker` stays light.
"""
import importlib

from ..api import progress_update, start
from .fitness import register_fitness_check
from .logger import RunPodLogger

__all__ = ["start", "progress_update", "register_fitness_check", "RunPodLogger", "utils",
           "modules"]


def __getattr__(name):
    if name in ("utils", "modules"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
