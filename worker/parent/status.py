"""The supervisor's read-only status: what other threads (sources, the local API, tests)
may know. The loop publishes a fresh, immutable copy after every step; readers never touch
the supervisor's own state."""
from __future__ import annotations

import enum
import time
from typing import NamedTuple

from ..config import Settings
from ..protocol import HandlerMode, Kind


class ChildState(str, enum.Enum):
    """A child as published: starting (from the moment the core asks for it to its
    Ready), ready, busy, stopping. Its full phase is the core's (child.Phase)."""
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"


class WorkerState(str, enum.Enum):
    RUNNING = "running"
    SETUP_FAILED = "setup_failed"   # final: the module cannot start; no respawn loop
    BROKEN = "broken"               # final: the restart-storm breaker tripped, or the GPU
    STOPPED = "stopped"


class ChildView(NamedTuple):
    """One child (one slot) as published."""
    slot: int
    devices: tuple                     # its CUDA_VISIBLE_DEVICES entries; () = the parent's
    pid: int | None
    state: ChildState | None
    mode: HandlerMode | None
    concurrency: int
    capacity: int                      # jobs it would take now, in all (0: not accepting)
    preloaded: tuple
    jobs_run: int                      # by the child in it now
    rss_bytes: int
    torch: dict | None
    baseline_mb: float
    running: tuple                     # ids of the jobs in it now
    log_ids: tuple                     # ids to tag its output with
    out: str | None                    # out of service, and why
    spawns: int
    deaths: int = 0                    # its restart breaker's count (restart_limit trips it)
    lost: int = 0                      # children here that did not exit after SIGKILL
    start_error: str | None = None     # a start failed for a moment: retrying, and why
    spare: dict | None = None          # its spare child (spares.SparePolicy.view)
    code: tuple = ()                   # reload mode: (files, packages) its children ran

    @property
    def ready(self) -> bool:
        return self.state in (ChildState.READY, ChildState.BUSY)

    def to_dict(self) -> dict:
        return {"slot": self.slot, "devices": list(self.devices), "pid": self.pid,
                "state": self.state.value if self.state else ("out" if self.out else None),
                "mode": self.mode.value if self.mode else "",
                "concurrency": self.concurrency, "preloaded": list(self.preloaded),
                "jobs_run": self.jobs_run, "rss_bytes": self.rss_bytes,
                "running": len(self.running), "restarts": max(0, self.spawns - 1),
                "out_of_service": self.out, "lost": self.lost,
                "start_retrying": self.start_error, "spare": _spare(self.spare)}


def _spare(view: dict | None) -> dict | None:
    """A slot's spare for /health: how long it has been ready, on the loop's clock."""
    if view is None:
        return None
    out = dict(view)
    ready_at = out.pop("ready_at", None)
    out["ready_for_s"] = None if ready_at is None else round(time.monotonic() - ready_at, 3)
    return out


class Status(NamedTuple):      # a tuple: immutable, and cheap to make after every step
    settings: Settings                 # the effective settings (start() keys applied)
    state: WorkerState
    failure: str | None
    kind: Kind | None                  # the handler's kind, as the last ready child said
    children: tuple                    # ChildView, one per slot
    spawns: int                        # children started so far
    pending: int
    finished: int
    last_ready_s: float | None
    gpu_events: tuple = ()             # the last NVML events: (what, what was done)
    received: int = 0                  # jobs submitted to the core, all told

    @property
    def first(self) -> ChildView:
        """The first child that runs (slot 0's when none does): the one-child view."""
        return next((c for c in self.children if c.pid is not None), self.children[0])

    # The first child, for a worker with one (and its logs, tests, the one-shot runner).
    child_pid = property(lambda self: self.first.pid)
    child_state = property(lambda self: self.first.state)
    mode = property(lambda self: self.first.mode)
    preloaded = property(lambda self: self.first.preloaded)
    jobs_run = property(lambda self: self.first.jobs_run)
    rss_bytes = property(lambda self: self.first.rss_bytes)
    torch = property(lambda self: self.first.torch)
    baseline_mb = property(lambda self: self.first.baseline_mb)

    @property
    def concurrency(self) -> int:
        """Jobs the ready children run at once, together (1 before any is ready)."""
        return sum(c.concurrency for c in self.children if c.ready) or 1

    @property
    def capacity(self) -> int:
        """Jobs the worker would hold in its children now (0: none is accepting)."""
        return sum(c.capacity for c in self.children)

    @property
    def running(self) -> tuple:
        return tuple(i for c in self.children for i in c.running)

    @property
    def restarts(self) -> int:
        return max(0, self.spawns - len(self.children))

    @property
    def streams(self) -> bool:
        return self.kind is not None and self.kind.streams

    @property
    def ready(self) -> bool:
        """A child can take jobs."""
        return any(c.ready for c in self.children)

    @property
    def degraded(self) -> bool:
        """Running, with some children out of service."""
        return self.state is WorkerState.RUNNING and any(c.out for c in self.children)

    def ping_code(self) -> int:
        """GET /ping as RunPod's load balancer reads it: 200 a child can take jobs, 204
        a child is starting (or being replaced), 503 the worker cannot run jobs (setup
        failed, the breaker tripped, the GPU is unhealthy, stopped)."""
        if self.state is not WorkerState.RUNNING:
            return 503
        return 200 if self.ready else 204

    def to_dict(self) -> dict:
        """The /health shape of the worker (without memory)."""
        first = self.first
        return {
            "state": self.state.value,
            "degraded": self.degraded,
            "child": None if first.pid is None else {
                "pid": first.pid, "state": first.state.value,
                "kind": self.kind.value if first.mode and self.kind else "",
                "mode": first.mode.value if first.mode else "",
                "concurrency": first.concurrency, "preloaded": list(first.preloaded),
                "jobs_run": first.jobs_run, "rss_bytes": first.rss_bytes},
            "children": [c.to_dict() for c in self.children],
            "restarts": self.restarts,
            "jobs": {"pending": self.pending, "in_progress": len(self.running),
                     "finished": self.finished},
            "failure": self.failure,
            "gpu_events": [{"event": what, "action": action}
                           for what, action in self.gpu_events],
        }


def health_view(status: Status, launcher: dict, probe, procs=None) -> dict:
    """The worker as /health shows it: the status, the launcher's template (`launcher`:
    Launcher.health()), and memory read now from `probe` (each child's with its GPUs,
    when there are several); a spare's GPU memory from NVML per process where `procs`
    (gpu_procs.ProcessMemory) can say, else torch's reservation from its heartbeat."""
    out = status.to_dict()
    for view, entry in zip(status.children, out["children"]):
        spare = entry.get("spare") or {}
        held = procs.of_tree(spare["pid"], view.devices) if procs and spare.get("pid") \
            else None
        if held is not None:
            spare["vram_mb"] = round(held, 1)
    out["warm_refresh"] = launcher["warm_refresh"]
    out["launcher"] = launcher
    try:
        reading = probe.read(status.child_pid)
        out["memory"] = {**reading.to_dict(), "baseline_mb": status.baseline_mb,
                         "child_torch": status.torch}
        if len(status.children) > 1:
            for view, entry in zip(status.children, out["children"]):
                mine = probe.read(view.pid)
                mine = mine.only(view.devices) if view.devices else mine
                entry["memory"] = {**mine.to_dict(), "baseline_mb": view.baseline_mb,
                                   "child_torch": view.torch}
    except Exception as exc:       # noqa: BLE001 - a monitor must never break the worker
        out["memory"] = {"probe": "error", "error": str(exc)}
    return out
