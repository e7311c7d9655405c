"""Fitness checks: functions the handler module registers to prove the machine is fit
before the worker takes jobs (the SDK's `register_fitness_check`).

The registry lives here; the child runs it (child/fitness_run.py). Checks registered
with the official SDK's decorator are run too, in their order after ours.
"""
from __future__ import annotations

import sys
from typing import Callable

_checks: list[Callable] = []


def register_fitness_check(func: Callable) -> Callable:
    """Decorator: run `func()` (sync or async) before the worker takes its first job. An
    exception means the worker is unfit: it reports unhealthy and exits 1."""
    if not callable(func):
        raise TypeError("register_fitness_check decorates a function")
    _checks.append(func)
    return func


def registered() -> list[Callable]:
    """Every check registered so far: ours, then the SDK's (when the handler imported it)."""
    checks = list(_checks)
    sdk = sys.modules.get("runpod.serverless.modules.rp_fitness")
    for func in getattr(sdk, "_fitness_checks", ()):
        if func not in checks:
            checks.append(func)
    return checks
