"""What the forkserver imports besides WORKER_PRELOAD.

A handler written for the official SDK imports `runpod`, which is slow to import (its
rp_debugger asks py-cpuinfo about the CPU in a subprocess at import time; the figure is in
docs/benchmarks.md). Each
fresh child paid that on every refresh; imported once in the forkserver, every child
has it. The parent reads the handler's source text only (it never imports the user's
module) and imports nothing itself: find_spec of a top-level package loads no code.
"""
from __future__ import annotations

import importlib.util
import re

from .. import handover
from ..targets import ModuleTarget, ScriptTarget

_IMPORTS_SDK = re.compile(r"^\s*(?:import\s+runpod\b|from\s+runpod[\s.])", re.MULTILINE)


def implied(target) -> tuple:
    """("runpod",) when the handler's source imports the SDK and it is installed."""
    source = _source(target)
    if not source or not _IMPORTS_SDK.search(source):
        return ()
    try:
        return ("runpod",) if importlib.util.find_spec("runpod") is not None else ()
    except (ImportError, ValueError):
        return ()


def _source(target) -> str:
    path = None
    if isinstance(target, ScriptTarget):
        path = target.path
    elif isinstance(target, ModuleTarget) and "." not in target.name:
        try:      # a top-level module: no package __init__ runs to find it
            spec = importlib.util.find_spec(target.name)
            path = spec.origin if spec is not None else None
        except (ImportError, ValueError):
            path = None
    if not path:
        return ""
    try:       # a zipapp's or a folder's __main__.py too
        return handover.script_source(path)[:1 << 20].decode("utf-8", "replace")
    except OSError:
        return ""
