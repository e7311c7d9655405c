"""Drop-in for existing RunPod workers: inside a child, the official SDK's
runpod.serverless.start / progress_update become gpu-worker's.

Installed before the handler module is imported; patches the SDK's modules as they load
(or at once if they are already loaded), so `import runpod` stays lazy and costs nothing
for handlers that do not use it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

# module name -> attribute names to replace
_TARGETS = {
    "runpod.serverless": ("start", "progress_update"),
    "runpod.serverless.modules.rp_progress": ("progress_update",),
}


def _patch(module) -> None:
    from . import runtime
    replacements = {"start": runtime.start, "progress_update": runtime.progress_update}
    for name in _TARGETS.get(module.__name__, ()):
        setattr(module, name, replacements[name])


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    for name in _TARGETS:
        if name in sys.modules:
            _patch(sys.modules[name])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
