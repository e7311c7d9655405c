"""What the parent hands a child: the handler to load (a target) and a ChildSpec.

Plain data that crosses the process boundary; the child's entry (child/entry.py) knows
how to run each target, the parent only builds and describes them.
"""
from __future__ import annotations

import os
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


@dataclass
class ChildSpec:
    target: Any
    settings: dict
    cwd: str
    preload: list
    control: Any     # Connection: the child's end of the control socketpair
    stdout: Any      # Connection: write end of the stdout capture pipe
    stderr: Any      # Connection: write end of the stderr capture pipe
    lifeline: Any    # Connection: read end; EOF means the parent died
