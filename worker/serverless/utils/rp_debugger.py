"""`rp_debugger`: named timings of a job's steps (FunctionTimer, LineTimer), as the SDK
has them. The worker clears them after every job, and with `--rp_debugger` returns them
in the job's output as `rp_debugger` (child/sdk_hooks.py)."""
from __future__ import annotations

import datetime
import functools
import platform
import sys
import time

from ...version import __version__


def _now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat() + "Z"


class Checkpoints:
    """One list of named checkpoints per process."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance.checkpoints = []
            cls._instance.name_lookup = {}
        return cls._instance

    def add(self, name: str) -> None:
        if name in self.name_lookup:
            raise KeyError(f'Checkpoint name "{name}" already exists.')
        self.checkpoints.append({"name": name})
        self.name_lookup[name] = len(self.checkpoints) - 1

    def start(self, name: str) -> None:
        if name not in self.name_lookup:
            raise KeyError(f"Checkpoint name '{name}' does not exist.")
        point = self.checkpoints[self.name_lookup[name]]
        point["start"] = time.perf_counter()
        point["start_utc"] = _now_utc()

    def stop(self, name: str) -> None:
        if name not in self.name_lookup:
            raise KeyError(f"Checkpoint name '{name}' does not exist.")
        point = self.checkpoints[self.name_lookup[name]]
        if "start" not in point:
            raise KeyError("Checkpoint has not been started.")
        point["end"] = time.perf_counter()
        point["stop_utc"] = _now_utc()

    def get_checkpoints(self) -> list:
        """The finished checkpoints, each with duration_ms (unfinished ones are left out)."""
        results = []
        for point in self.checkpoints:
            if "start" not in point or "end" not in point:
                continue
            point["duration_ms"] = (point.pop("end") - point.pop("start")) * 1000
            results.append(point)
        return results

    def clear(self) -> None:
        self.checkpoints = []
        self.name_lookup = {}


class LineTimer:
    """`with LineTimer("name"): ...` records one checkpoint."""

    def __init__(self, name: str):
        self.checkpoints = Checkpoints()
        self.name = name
        self.checkpoints.add(name)

    def __enter__(self):
        self.checkpoints.start(self.name)

    def __exit__(self, *exc):
        self.checkpoints.stop(self.name)


class FunctionTimer:
    """`@FunctionTimer` records a checkpoint named after the function on each call."""

    def __init__(self, function):
        self.function = function
        self.checkpoints = Checkpoints()
        functools.update_wrapper(self, function)

    def __call__(self, *args, **kwargs):
        name = self.function.__name__
        self.checkpoints.add(name)
        try:
            self.checkpoints.start(name)
            return self.function(*args, **kwargs)
        finally:
            if name in self.checkpoints.name_lookup:
                self.checkpoints.stop(name)


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "Unable to get processor info."


def system_info() -> dict:
    sdk = sys.modules.get("runpod")
    return {"os": f"{platform.system()} {platform.release()}", "processor": _processor(),
            "python_version": platform.python_version(),
            "runpod": getattr(sdk, "__version__", None), "gpu_worker": __version__}


def get_debugger_output() -> dict:
    """The finished checkpoints and system info; the checkpoints are cleared."""
    checkpoints = Checkpoints()
    timestamps = checkpoints.get_checkpoints()
    checkpoints.clear()
    return {"system_info": system_info(), "timestamps": timestamps}


def clear_debugger_output() -> None:
    Checkpoints().clear()
