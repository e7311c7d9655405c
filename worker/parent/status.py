"""The supervisor's read-only status: what other threads (sources, the local API, tests)
may know. The loop publishes a fresh, immutable copy after every step; readers never touch
the supervisor's own state."""
from __future__ import annotations

import enum
from typing import NamedTuple

from ..config import Settings
from ..protocol import HandlerMode, Kind
from .lifecycle import ChildState


class WorkerState(str, enum.Enum):
    RUNNING = "running"
    SETUP_FAILED = "setup_failed"   # final: the module cannot start; no respawn loop
    BROKEN = "broken"               # final: the restart-storm breaker tripped, or the GPU
    STOPPED = "stopped"


class Status(NamedTuple):      # a tuple: immutable, and cheap to make after every step
    settings: Settings                 # the effective settings (start() keys applied)
    state: WorkerState
    failure: str | None
    child_pid: int | None
    child_state: ChildState | None
    kind: Kind | None                  # the handler's kind, as the last ready child said
    mode: HandlerMode | None
    concurrency: int
    capacity: int                      # jobs the child would take now (0: not accepting)
    preloaded: tuple
    jobs_run: int                      # by the current child
    rss_bytes: int
    torch: dict | None
    baseline_mb: float
    spawns: int                        # children started so far
    pending: int
    running: tuple                     # ids of jobs in the child now
    log_ids: tuple                     # ids to tag the child's output with
    finished: int
    last_ready_s: float | None
    gpu_events: tuple = ()             # the last NVML events: (what, what was done)

    @property
    def restarts(self) -> int:
        return max(0, self.spawns - 1)

    @property
    def streams(self) -> bool:
        return self.kind is not None and self.kind.streams

    @property
    def ready(self) -> bool:
        return self.child_state in (ChildState.READY, ChildState.BUSY)

    def ping_code(self) -> int:
        """GET /ping as RunPod's load balancer reads it: 200 a child can take jobs, 204
        a child is starting (or being replaced), 503 the worker cannot run jobs (setup
        failed, the breaker tripped, the GPU is unhealthy, stopped)."""
        if self.state is not WorkerState.RUNNING:
            return 503
        return 200 if self.ready else 204

    def to_dict(self) -> dict:
        """The /health shape of the worker (without memory)."""
        return {
            "state": self.state.value,
            "child": None if self.child_pid is None else {
                "pid": self.child_pid, "state": self.child_state.value,
                "kind": self.kind.value if self.mode and self.kind else "",
                "mode": self.mode.value if self.mode else "",
                "concurrency": self.concurrency, "preloaded": list(self.preloaded),
                "jobs_run": self.jobs_run, "rss_bytes": self.rss_bytes},
            "restarts": self.restarts,
            "jobs": {"pending": self.pending, "in_progress": len(self.running),
                     "finished": self.finished},
            "failure": self.failure,
            "gpu_events": [{"event": what, "action": action}
                           for what, action in self.gpu_events],
        }
