"""The supervisor's loop: one thread that feeds events to the core and carries out the
actions it returns.

The public methods (any thread) only queue commands and wake the loop. The loop waits on
one selector: each child's channel and exit sentinel (child_io.py) and a wake-up pipe,
with a timeout set by the core's nearest deadline. After every step it publishes a frozen
Status: the only view of the supervisor other threads get.
"""
from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from typing import Any, Callable

from .. import protocol as P
from .. import tracing
from ..config import Settings
from ..jobs import JobResult, JobState, Reason, failure
from . import actions as A
from . import placement, preloads
from .actions import JobListener
from .child_io import ChildIO, ChildWiring, _only
from .commands import Commands
from .core import SupervisorCore
from .health_file import HealthFile
from .lifecycle import ChildState
from .metrics import Metrics
from .monitor import make_probe
from .output import log_child_line
from .spawner import Spawner
from .status import Status, WorkerState

log = logging.getLogger("worker")

__all__ = ["Supervisor", "JobListener", "JobResult", "ChildState", "WorkerState", "Status",
           "exit_process"]


def exit_process(message: str) -> None:
    """on_fatal for the command-line sources: a worker whose supervisor loop died cannot
    run jobs and must not look alive; the child follows through its lifeline."""
    log.critical("%s; exiting", message)
    logging.shutdown()
    os._exit(70)


class Supervisor(ChildWiring):
    def __init__(self, settings: Settings, target: Any, spawner: Spawner | None = None,
                 output_sink: Callable | None = None, probe: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_fatal: Callable[[str], None] | None = None,
                 devices: list | None = None, one_child: bool = False):
        """`devices`: each child's GPUs, one entry per child; by default placement.plan
        of the GPUs visible here, WORKER_CHILDREN and WORKER_GPUS_PER_CHILD (only its
        first child with `one_child`)."""
        self.target = target
        self.spawner = spawner or Spawner(
            settings.start_method,
            settings.preload + tuple(m for m in preloads.implied(target)
                                     if m not in settings.preload),
            warm=target if settings.warm_refresh else None)
        # monitor.HostProbe/NvmlProbe, or any .read(pid); made here: placement uses it
        self.probe = probe if probe is not None else make_probe()
        if devices is None:
            devices = placement.plan(
                placement.visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), self.probe),
                settings.gpus_per_child, settings.children)[:1 if one_child else None]
        if len(devices) > 1:
            log.info("%d children: %s", len(devices), "; ".join(
                f"{i}: {','.join(d) or 'no GPU'}" for i, d in enumerate(devices)))
        self.core = SupervisorCore(settings, tuple(self.spawner.preload),
                                   check_preload=self.spawner.method == "forkserver",
                                   devices=devices)
        self.output_sink = output_sink or log_child_line
        self.clock = clock
        self.on_fatal = on_fatal         # the loop itself died: the process should exit
        self.status: Status = self.core.status()
        self._io: list[ChildIO | None] = [None] * len(devices)     # per slot
        self._dirty = False              # the core changed since the last publish
        self._fresh = False              # self.status was computed after the last change
        self._previous_baseline: list = [None] * len(devices)   # of the slot's last child
        self._health = HealthFile(settings.health_file) if settings.health_file else None
        self._probe_stop = threading.Event()
        self._commands = Commands()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._commands.wake_fd, selectors.EVENT_READ, "wake")
        self._changed = threading.Condition()
        self._capacity_watchers: list = []
        self._published_capacity = 0
        self._thread = threading.Thread(target=self._loop, name="gpu-worker-supervisor",
                                        daemon=True)
        self.metrics = Metrics(lambda: self.status, self.probe)

    # --- public API (any thread) ---------------------------------------------------------

    def start(self) -> "Supervisor":
        watch = getattr(self.probe, "watch_xids", None)
        if watch is not None:
            watch(self.gpu_event, self._probe_stop)
        s = self.status.settings
        if s.metrics_port:
            self.metrics.serve(s.metrics_host, s.metrics_port)
        self._thread.start()
        return self

    def submit(self, job: dict, listener: JobListener, raw: Any = None) -> None:
        """Queue a job. Its listener hears exactly one on_result. `raw`, when given, is
        the job's exact JSON encoding (bytes, or a tuple of bytes-like parts that join to
        it): it goes to the child as is (no re-encoding, no copy)."""
        tracing.TRACES.remember(job)
        if not self._command(self.core.submit, job, listener, self.clock(), raw):
            self._refuse_late(job, listener)

    def cancel(self, job_id: str, queued_only: bool = False) -> None:
        """End a job as CANCELLED: dropped if queued, stopped if running (unless
        queued_only)."""
        self._command(self.core.cancel, job_id, queued_only)

    def refresh(self, reason: str = "requested") -> None:
        """Replace the child once it is idle."""
        self._command(self.core.refresh, reason)

    def stop(self, grace: float = 0.0) -> None:
        """Stop taking jobs; let running ones finish for `grace` seconds; stop the child."""
        self._command(self.core.stop, grace)

    def gpu_event(self, xid: int, what: str) -> None:
        """An Xid or ECC event from NVML (the probe's watcher thread)."""
        self._command(self.core.gpu_event, xid, what)

    def kill_child_group(self, sig: int) -> None:
        """Signal every child's process group now (a second SIGTERM: no time for
        courtesy)."""
        for io in list(self._io):
            if io is not None:
                io.proc.signal_group(sig)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_until(self, predicate: Callable[[Status], bool],
                   timeout: float | None = None) -> bool:
        """Wait until `predicate(status)` holds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.status), timeout)

    def on_capacity(self, fn: Callable[[], None]) -> None:
        """Call `fn` (from the loop's thread; it must be quick) whenever the number of jobs
        the worker takes now changes: a source waiting for room hears of it at once."""
        self._capacity_watchers.append(fn)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once a child is ready; False if the worker failed or the time ran out."""
        self.wait_until(lambda s: s.ready or s.state is not WorkerState.RUNNING, timeout)
        return self.status.ready

    # Shorthands for the published status.
    settings = property(lambda self: self.status.settings)
    state = property(lambda self: self.status.state)
    failure_message = property(lambda self: self.status.failure)
    child_state = property(lambda self: self.status.child_state)
    child_pid = property(lambda self: self.status.child_pid)

    def snapshot(self) -> dict:
        """The worker for /health: the status, and memory read now (each child's with its
        GPUs, when there are several)."""
        status = self.status
        out = status.to_dict()
        out["warm_refresh"] = self.spawner.warm_status
        try:
            reading = self.probe.read(status.child_pid)
            out["memory"] = {**reading.to_dict(), "baseline_mb": status.baseline_mb,
                             "child_torch": status.torch}
            if len(status.children) > 1:
                for view, entry in zip(status.children, out["children"]):
                    mine = _only(self.probe.read(view.pid), view.devices)
                    entry["memory"] = {**mine.to_dict(), "baseline_mb": view.baseline_mb,
                                       "child_torch": view.torch}
        except Exception as exc:       # a monitor must never break the worker
            out["memory"] = {"probe": "error", "error": str(exc)}
        return out

    # --- the loop ------------------------------------------------------------------------

    def _command(self, fn: Callable, *args: Any) -> bool:
        """Queue a command for the loop; False once the loop has ended."""
        return self._commands.put(fn, args)

    def _refuse_late(self, job: Any, listener: JobListener) -> None:
        """A job that reached a supervisor whose loop has ended still gets its one result."""
        job_id = job.get("id") if isinstance(job, dict) else None
        s = self.settings
        result = failure(job_id if isinstance(job_id, str) else "unknown", JobState.FAILED,
                         Reason.REFUSED, "JobRefused", "the worker has stopped", s.worker_id,
                         s.hostname)
        self.metrics.loop.ended(result)      # the loop has ended: no other writer
        if isinstance(job_id, str):
            tracing.TRACES.ended(job_id)
        try:
            listener.on_result(result)
        except Exception:
            log.exception("a job listener failed")

    def _guarded(self, fn: Callable, *args: Any) -> None:
        """Feed one event to the core and carry out its actions. Whatever goes wrong fails
        the job the event carried (and the child's jobs, which may be half-handled), never
        the loop."""
        self._fresh = False
        try:
            self._apply(fn(*args, self.clock()))
        except Exception as exc:    # noqa: BLE001 - the guard of the supervisor's loop
            log.exception("internal error on %s", getattr(fn, "__name__", fn))
            job, listener = (args[0], args[1]) if fn == self.core.submit else (None, None)
            self._apply(self.core.internal_error(f"{type(exc).__name__}: {exc}", job,
                                                 listener, self.clock()))

    def _loop(self) -> None:
        core = self.core
        fatal = None
        self._commands.loop_ident = threading.get_ident()
        try:
            self._guarded(core.tick)
            while True:
                while (command := self._commands.take()) is not None:
                    self._guarded(command[0], *command[1])
                if core.finished:
                    break
                if self._dirty:
                    self._publish()
                deadline = core.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                exited = []
                ready = self._sel.select(timeout)
                for key, events in ready:
                    if key.data == "wake":
                        self._commands.woken()
                        continue
                    what, index = key.data
                    if what == "ctrl":
                        if events & selectors.EVENT_WRITE:
                            self._io[index].channel.flush()
                            self._watch_writes(index)
                        if events & selectors.EVENT_READ:
                            self._read(index)
                    else:
                        exited.append(index)
                for index in exited:   # last: the channel's final messages are read first
                    self._child_exited(index)
                # Events check the clocks too, but not when none came (or only a flush).
                if deadline is not None and deadline <= self.clock():
                    self._guarded(core.tick)
        except Exception as exc:    # noqa: BLE001 - even the guards failed: end it loudly
            fatal = f"the worker's supervisor failed: {type(exc).__name__}: {exc}"
            log.exception("supervisor loop failed")
            core.state, core.failure_message = WorkerState.BROKEN, fatal
            self._fresh = False
            try:
                self._apply(core.fail_everything("WorkerError", fatal))
            except Exception:   # noqa: BLE001
                log.exception("could not fail the jobs held")
            for io in self._io:
                if io is not None:
                    io.proc.close()
        finally:
            self._probe_stop.set()
            self.metrics.close()
            close = getattr(self.probe, "close", None)
            if close is not None:
                close()
            if core.state is WorkerState.RUNNING:
                core.state = WorkerState.STOPPED
            self._fresh = False
            self._publish()
            self._sel.close()
            for fn, args in self._commands.close():       # queued as the loop ended
                if fn == core.submit:
                    self._refuse_late(args[0], args[1])
        if fatal is not None and self.on_fatal is not None:
            self.on_fatal(fatal)

    def _publish(self) -> None:
        self._dirty = False
        if not self._fresh:
            self.status = self.core.status()
            self._fresh = True
        if self._health is not None:
            self._health.update(self.status)
        with self._changed:
            self._changed.notify_all()
        if self.status.capacity != self._published_capacity:
            self._published_capacity = self.status.capacity
            for fn in self._capacity_watchers:
                try:
                    fn()
                except Exception:      # noqa: BLE001 - a watcher must not break the loop
                    log.exception("a capacity watcher failed")

    def _apply(self, actions: list) -> None:
        """Carry out the core's actions in order, the status published first (a listener
        called here sees the state that led to its event); a job's Run goes out first, so
        the child works while the rest is done (2 cores). Spawn and ReadMemory feed the
        core again. Waiters are woken once per turn of the loop (`_publish`)."""
        self._dirty = True
        if not actions:
            return
        if not self._fresh:
            self.status = self.core.status()
            self._fresh = True
        runs = [a for a in actions if type(a) is A.Send and isinstance(a.msg, P.Run)]
        for action in runs:
            self._send(action)
        for action in actions:
            if not (type(action) is A.Send and isinstance(action.msg, P.Run)):
                self._HANDLERS[type(action)](self, action)

    def _spawn_counted(self, action: A.Spawn) -> None:
        self.metrics.loop.started(action.cause)
        self._spawn(action)

    def _ready(self, action: A.ChildReady) -> None:
        self.metrics.loop.setup.observe(action.setup_s)

    def _ended(self, action: A.Ended) -> None:
        """A job's one final record: counted, logged with its times, then told."""
        r = action.result
        self.metrics.loop.ended(r)
        level = logging.INFO if r.state is JobState.COMPLETED else logging.WARNING
        if log.isEnabledFor(level):          # a line per job: built only when shown
            vram = r.extra.get("peak_vram_mb")
            log.log(level, "job %s (%s)%s%s", r.state.value, r.reason.value, r.times_text(),
                    "" if vram is None else f", peak VRAM {vram:.0f} MiB",
                    extra={"job_id": r.job_id})
        self._tell(action)
        if r.trace is not None:
            tracing.TRACES.ended(r.job_id)

    def _tell(self, action) -> None:
        try:
            if isinstance(action, A.Ended):
                action.listener.on_result(action.result)
            elif isinstance(action, A.Started):
                action.listener.on_start(action.job_id)
            elif isinstance(action, A.Progressed):
                action.listener.on_progress(action.job_id, action.value)
            else:
                action.listener.on_chunk(action.job_id, action.value)
        except Exception:
            log.exception("a job listener failed")

    def _warm_off(self, action: A.WarmOff) -> None:
        self.spawner.warm_off(action.reason)

    _HANDLERS = {A.Spawn: _spawn_counted, A.Send: ChildWiring._send,
                 A.Signal: ChildWiring._signal, A.WarmOff: _warm_off,
                 A.ReadMemory: ChildWiring._read_memory, A.ChildReady: _ready,
                 A.Started: _tell, A.Progressed: _tell, A.Chunked: _tell, A.Ended: _ended}
