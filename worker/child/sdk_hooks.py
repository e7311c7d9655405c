"""What the runpod SDK does around each job that a handler can observe, done in the child
for ours and the SDK's helpers alike (docs/compatibility.md lists them all).

After every job the rp_debugger checkpoints are cleared (a FunctionTimer used by the next
job would otherwise raise "Checkpoint name … already exists"); with `--rp_debugger` they
are first added to a dict output as `rp_debugger`, with the system info and the time from
the process start to start().
"""
from __future__ import annotations

import sys
import time

STARTED = time.perf_counter()        # this module loads in the forkserver: reset per child
_SDK_DEBUGGER = "runpod.serverless.utils.rp_debugger"
_OUR_DEBUGGER = "worker.serverless.utils.rp_debugger"


def child_started() -> None:
    global STARTED
    STARTED = time.perf_counter()


def _debuggers() -> list:
    return [sys.modules[name] for name in (_OUR_DEBUGGER, _SDK_DEBUGGER) if name in sys.modules]


def after_job(body: dict, with_debugger: bool, ready_at: float) -> None:
    """Clear the checkpoints; with the debugger flag, put them in a dict output first."""
    modules = _debuggers()
    if not modules:
        return
    output = body.get("output")
    if with_debugger and isinstance(output, dict):
        from ..serverless.utils.rp_debugger import system_info
        timestamps = []
        for module in modules:
            timestamps.extend(module.Checkpoints().get_checkpoints())
        output["rp_debugger"] = {"system_info": system_info(), "timestamps": timestamps,
                                 "ready_delay_ms": (ready_at - STARTED) * 1000}
    for module in modules:
        module.Checkpoints().clear()
