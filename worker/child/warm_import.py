"""WORKER_WARM_REFRESH: the forkserver imports the handler module itself, once.

Every child is then a fork of a process that already holds the module, its imports and
whatever it loaded at import time (CPU-side weights, shared copy-on-write), so a refresh
skips the module body. The module's start() is recorded, not run: the call unwinds the
module's body at that point (as in a child, where the job loop runs inside start()), and
each child serves the recorded config. Each child starts from the state the import left,
never from a used one.

A fork carries neither CUDA nor threads nor child processes. If the import initialised
CUDA, left a thread running (a native one counts: an OpenMP pool does not survive a fork)
or started a process, or raised, the warm state is refused: the first child reports why (one log line in the
parent), and the parent restarts the forkserver without it; children start cold.

The forkserver's last preload (warm_preload.py) calls load(); the target comes in
GPU_WORKER_WARM (set only while the forkserver starts). load() never raises.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import random
import sys
import threading
import time
import types
from dataclasses import dataclass, field

from ..targets import WARM_ENV


@dataclass
class Warm:
    key: str                   # the target it was made for (its JSON)
    config: dict | None = None   # start()'s config, when the module called it
    namespace: dict = field(default_factory=dict)
    refused: str | None = None   # why a child must not use it
    exit_hooks: list = field(default_factory=list)   # atexit hooks the import registered
    torch_threads: int | None = None   # torch's intra-op threads, for the child to restore
    seeded: frozenset = frozenset()    # generator families the import seeded (seeds.py)
    random_state: object = None        # `random`'s state after the import, if it seeded it


STATE: Warm | None = None


def _tasks() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _children() -> set:
    try:
        import psutil
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except Exception:       # noqa: BLE001 - no psutil: nothing to compare
        return set()


def _cuda_initialised() -> str | None:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return "torch initialised CUDA"
    except Exception:       # noqa: BLE001 - a CPU build, a broken install: not initialised
        pass
    try:
        with open("/proc/self/maps") as f:
            if "libcuda.so" not in f.read():
                return None
        import ctypes
        count = ctypes.c_int()
        # cuDeviceGetCount answers CUDA_ERROR_NOT_INITIALIZED (3) until cuInit ran, and
        # does not run it.
        if ctypes.CDLL("libcuda.so.1").cuDeviceGetCount(ctypes.byref(count)) != 3:
            return "the CUDA driver was initialised"
    except Exception:       # noqa: BLE001
        return None
    return None


def _settle_threads(before: set, wait_s: float = 1.0) -> None:
    """Threads an import leaves behind that need not stay: tqdm's monitor (a progress bar
    while weights load starts it; tqdm starts another when it needs one) is stopped, and
    threads already finishing get a moment to end."""
    monitor_type = getattr(sys.modules.get("tqdm._monitor"), "TMonitor", None)
    for thread in threading.enumerate():
        if monitor_type is not None and isinstance(thread, monitor_type):
            try:
                thread.exit()
                thread.tqdm_cls.monitor = None      # the class (or subclass) that made it
            except Exception:   # noqa: BLE001 - then it counts as a thread, and refuses
                pass
    deadline = time.monotonic() + wait_s
    for thread in [t for t in threading.enumerate() if t not in before]:
        thread.join(max(0.0, deadline - time.monotonic()))


def _run(kind: str, where: str, argv: list) -> dict:
    """Run the module as a child would (a script as __main__, a module by import),
    keeping its namespace even when start() unwinds it."""
    if kind == "script":
        sys.argv = [where, *argv]
        sys.path.insert(0, os.path.dirname(os.path.realpath(where)))
        module = types.ModuleType("__main__")
        module.__file__ = where
        module.__builtins__ = __builtins__
        sys.modules["__main__"] = module         # as runpy does while the script runs
        with open(where, "rb") as f:
            code = compile(f.read(), where, "exec")
    else:
        sys.argv = [where, *argv]
        spec = importlib.util.find_spec(where)
        if spec is None or spec.loader is None:
            raise ImportError(f"no module named {where!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[where] = module              # stays, even if start() unwinds it
        code = None
    from . import runtime
    try:
        if code is not None:
            exec(code, module.__dict__)
        else:
            spec.loader.exec_module(module)
    except runtime.Recorded as call:
        return {"config": call.config, "namespace": module.__dict__}
    return {"config": None, "namespace": module.__dict__}


def _load() -> Warm | None:
    raw = os.environ.pop(WARM_ENV, None)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        kind, where, argv = spec["kind"], spec["where"], spec["argv"]
    except (ValueError, KeyError, TypeError):
        return None
    state = Warm(raw)
    from . import runpod_compat, runtime, seeds
    threads, tasks, children = set(threading.enumerate()), _tasks(), _children()
    runpod_compat.install()
    runtime.recording(True)
    register = atexit.register

    def recorded_hook(func, *args, **kwargs):    # a child clears the forkserver's hooks
        state.exit_hooks.append((func, args, kwargs))    # and registers these again
        return register(func, *args, **kwargs)
    atexit.register = recorded_hook
    # torch's OpenMP pool does not survive a fork (a child forked after a parallel op
    # hangs in its next one): one thread while the module loads, so no pool starts here;
    # each child sets the count back and starts its own.
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            state.torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        except Exception:     # noqa: BLE001
            state.torch_threads = None
    try:
        with seeds.watch() as seeded:
            out = _run(kind, where, argv)
        state.config, state.namespace = out["config"], out["namespace"]
        state.seeded = frozenset(seeded)
        if "random" in seeded:
            state.random_state = random.getstate()
    except BaseException as exc:   # noqa: B902 - whatever the import does, the forkserver lives
        state.refused = f"the module raised {type(exc).__name__} at import: {exc}"[:500]
        return state
    finally:
        runtime.recording(False)
        atexit.register = register
        if state.torch_threads is not None and torch.get_num_threads() != 1:
            state.torch_threads = torch.get_num_threads()    # the module chose its own
    _settle_threads(threads)
    started = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
    if started:
        state.refused = f"the import started threads ({', '.join(started)[:200]})"
    elif _tasks() > tasks:
        state.refused = (f"the import started {_tasks() - tasks} native thread(s) (e.g. an "
                         "OpenMP pool; with torch, preload it: WORKER_PRELOAD=torch)")
    elif _children() - children:
        state.refused = "the import started child processes"
    else:
        state.refused = _cuda_initialised()
    if state.refused is None and state.config is None and \
            not callable(state.namespace.get("handler")):
        state.refused = "the module neither calls start() nor defines a handler function"
    return state


def load() -> None:
    """Make STATE (warm_preload.py calls this in the forkserver, after the preloads)."""
    global STATE
    try:
        STATE = _load()
    except BaseException:    # noqa: B902 - never take the forkserver down
        STATE = None
