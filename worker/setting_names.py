"""WORKER_* variables that no setting reads: named at start-up, with the nearest setting's
name, so a misspelt limit does not look as if it were in force. A warning by default (a
handler may read WORKER_* names of its own); WORKER_STRICT_SETTINGS makes it an error.
Platform names (RUNPOD_*, PORT, PORT_HEALTH) are never looked at."""
from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Mapping

from .config import Settings
from .setting_sources import ALIASES

# WORKER_* names the worker gives its own children, not settings
OWN_NAMES = ("WORKER_CHILD_INDEX", "WORKER_SPARE_BESIDE")
OLD_NAMES = {a.old for a in ALIASES}          # deprecated: said by setting_sources


def unknown_names(env: Mapping[str, str]) -> list[str]:
    """A line for each WORKER_* variable that no setting reads, with the nearest known
    name when one is close: a misspelt limit must not look as if it were in force."""
    known = sorted({n for f in dataclasses.fields(Settings) for n in f.metadata["env"]
                    if n.startswith("WORKER_")})       # suggested; old names only accepted
    lines = []
    for name in sorted(n for n in env if n.startswith("WORKER_")):
        if name in known or name in OWN_NAMES or name in OLD_NAMES:
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        lines.append(f"{name} is not a setting" + (f"; did you mean {near[0]}?" if near else
                     " (ignored; a handler may read WORKER_* names of its own)"))
    return lines


def names_ok(settings: Settings, env: Mapping[str, str], prog: str = "worker") -> bool:
    """Print each WORKER_* variable no setting reads (a warning; with
    WORKER_STRICT_SETTINGS an error, and False: the worker does not start)."""
    lines = unknown_names(env)
    kind = "error" if settings.strict_settings else "warning"
    for line in lines:
        print(f"{prog}: {kind}: {line}", file=sys.stderr)
    return not (settings.strict_settings and lines)
