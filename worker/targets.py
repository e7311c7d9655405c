"""What the parent hands a child: the handler to load (a target) and a ChildSpec.

Plain data that crosses the process boundary; the child's entry (child/entry.py) knows
how to run each target, the parent only builds and describes them.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScriptTarget:
    """A handler file, run as __main__ (as `python handler.py` would)."""
    path: str
    argv: list = field(default_factory=list)

    def describe(self) -> str:
        return os.path.basename(self.path)


@dataclass
class ModuleTarget:
    """An importable module that calls start() when imported."""
    name: str
    argv: list = field(default_factory=list)

    def describe(self) -> str:
        return self.name


@dataclass
class ValueTarget:
    """A start() config that crosses by value (a handler defined in a REPL or notebook)."""
    config: Any

    def describe(self) -> str:
        return getattr(self.config.get("handler"), "__qualname__", "handler")


# Secrets the handler has no use for: the queue's key and the local API's token. They are
# kept out of the child's environment, its /proc/self/environ and its settings, unless
# named in WORKER_CHILD_ENV_PASS (then they come in `env`).
SECRET_ENV = ("RUNPOD_AI_API_KEY", "WORKER_API_TOKEN", "WORKER_QUEUE_URL",
              "WORKER_WEBHOOK_PROXY")
SECRET_SETTINGS = ("api_token", "queue_url", "webhook_proxy")


@dataclass
class ChildSpec:
    target: Any
    settings: dict   # without SECRET_SETTINGS
    cwd: str
    preload: list
    env: dict        # secrets passed on purpose (WORKER_CHILD_ENV_PASS), its GPUs
    control: Any     # Connection: the child's end of the control socketpair
    stdout: Any      # Connection: write end of the stdout capture pipe
    stderr: Any      # Connection: write end of the stderr capture pipe
    lifeline: Any    # Connection: read end; EOF means the parent died
    checks: bool = False   # run the fitness checks before Ready (the worker's first child)
    forked: bool = False   # forked from the forkserver (which must have dropped its rights)


# WORKER_WARM_REFRESH: the variable that tells a starting forkserver which target to import
# (child/warm_import.py), and the key that names that target on both sides.
WARM_ENV = "GPU_WORKER_WARM"
# Reload mode: the third-party packages the handler imported, for child/preload_auto.py.
AUTO_PRELOAD_ENV = "GPU_WORKER_AUTO_PRELOAD"
# The rights a starting forkserver drops to before it imports anything (a child's: the
# capabilities it keeps, its user), for child/preload_first.py.
RIGHTS_ENV = "GPU_WORKER_RIGHTS"


def warm_key(target) -> str | None:
    """The target as the forkserver imports it (JSON), or None: a handler given as a value
    lives in the parent and cannot be imported there."""
    if isinstance(target, ScriptTarget):
        if os.path.isdir(target.path) or zipfile.is_zipfile(target.path):
            return None            # a zipapp or a folder: runpy runs it, the child only
        kind, where = "script", target.path
    elif isinstance(target, ModuleTarget):
        kind, where = "module", target.name
    else:
        return None
    return json.dumps({"kind": kind, "where": where, "argv": list(target.argv)}, sort_keys=True)


def child_path(path: list) -> list:
    """A child's import path: the parent's, with the working folder first, as `python -m
    worker` gives without -P (safe_path.py keeps it off the parent's own path)."""
    try:
        cwd = os.getcwd()
    except OSError:
        return list(path)
    return list(path) if not getattr(sys.flags, "safe_path", False) or cwd in path \
        else [cwd, *path]
