"""The supervisor: owns one child at a time, feeds it jobs, watches it, replaces it.

All state lives in one thread (the loop); the public methods only queue commands and wake
it. The loop waits on one selector: the child's channel, the child's exit sentinel and a
wake-up pipe, with a timeout set by the nearest deadline (setup, job, heartbeat, the
steps of a stop). Every job ends in exactly one final state, reported once, through its
listener, from this thread.
"""
from __future__ import annotations

import collections
import enum
import logging
import os
import selectors
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocol as P
from .config import Settings
from .jobs import (JobError, JobResult, JobState, Reason, execution_timeout, failure,
                   validate_job)
from .monitor import classify_xid, make_probe
from .output import OutputPump
from .spawner import ChildProcess, Spawner

log = logging.getLogger("worker")
child_log = logging.getLogger("worker.child")


class ChildState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"


class WorkerState(str, enum.Enum):
    RUNNING = "running"
    SETUP_FAILED = "setup_failed"   # final: the module cannot start; no respawn loop
    BROKEN = "broken"               # final: the restart-storm breaker tripped
    STOPPED = "stopped"


class JobListener:
    """What a job source hears about its job. Called from the supervisor's thread: keep
    these quick (hand off to your own thread or loop)."""

    def on_start(self, job_id: str) -> None: ...
    def on_progress(self, job_id: str, value: Any) -> None: ...
    def on_chunk(self, job_id: str, value: Any) -> None: ...
    def on_result(self, result: JobResult) -> None: ...


@dataclass
class _Job:
    job: dict
    listener: JobListener
    submitted: float
    started: float = 0.0
    deadline: float | None = None
    crashes: int = 0
    finished: bool = False
    raw: bytes | None = None

    @property
    def id(self) -> str:
        return self.job["id"]


@dataclass
class _Child:
    proc: ChildProcess
    pump: OutputPump
    setup_deadline: float | None
    state: ChildState = ChildState.STARTING
    mode: str = ""
    kind: str = ""
    concurrency: int = 1
    last_beat: float = 0.0
    rss: int = 0
    jobs_run: int = 0
    refresh_reason: str | None = None   # replace once idle
    stop_reason: str | None = None      # a stop we started
    stop_unplanned: bool = False        # ...that counts as a death (hung child)
    stop_step: int = 0
    stop_next: float | None = None
    setup_error: tuple | None = None
    torch: dict | None = None            # the child's allocator figures (heartbeat)
    preloaded: list = field(default_factory=list)
    reader: P.FrameReader = field(default_factory=P.FrameReader)
    outbox: bytearray = field(default_factory=bytearray)
    cancels: dict = field(default_factory=dict)   # job id -> deadline for the child's ack


# Errors after which a CUDA context cannot be trusted: every later call fails too.
STICKY_CUDA = ("illegal memory access", "device-side assert", "cudaErrorIllegalAddress",
               "unspecified launch failure", "CUDA error")
CUDA_OOM = ("CUDA out of memory", "OutOfMemoryError", "CUDA_ERROR_OUT_OF_MEMORY")


def cuda_failure(error: Any, refresh_on_oom: bool = True) -> str | None:
    """The reason to replace the child after this failed job, if it is a CUDA one."""
    if error is None:
        return None
    text = error if isinstance(error, str) else str(error)
    if any(p in text for p in CUDA_OOM):
        return "the job ran out of GPU memory" if refresh_on_oom else None
    if any(p in text for p in STICKY_CUDA):
        return "the job hit a sticky CUDA error (the context cannot be trusted)"
    return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        text = f"killed by {name}"
        if -code == signal.SIGKILL:
            text += " (out of memory?)"
        return text
    return f"exited with code {code}"


def _log_child_line(stream: str, line: str, job_ids: tuple) -> None:
    child_log.info("%s: %s", stream, line, extra={"job_id": ",".join(job_ids) or None})


class Supervisor:
    def __init__(self, settings: Settings, target: Any, spawner: Spawner | None = None,
                 output_sink: Callable | None = None, probe: Any = None):
        self.settings = settings
        self.target = target
        self.spawner = spawner or Spawner(settings.start_method, settings.preload)
        self.output_sink = output_sink or _log_child_line
        self.probe = probe               # monitor.HostProbe/NvmlProbe, or any .read(pid)
        self.baseline_mb = 0.0           # device memory in use before the child started
        self._probe_stop = threading.Event()
        self.state = WorkerState.RUNNING
        self.failure_message: str | None = None
        self.child: _Child | None = None
        self.pending: collections.deque[_Job] = collections.deque()
        self.in_flight: dict[str, _Job] = {}
        self.spawns = 0
        self.deaths: collections.deque[float] = collections.deque()
        self.jobs_finished = 0
        self.last_ready_s: float | None = None
        self.handler_kind: str | None = None     # as the last ready child reported it
        self._running_ids: tuple = ()
        self._active_ids: set = set()        # ids pending or in flight
        self._commands: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._shutdown_at: float | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="gpu-worker-supervisor",
                                        daemon=True)

    # --- public API (any thread) ---------------------------------------------------------

    def start(self) -> "Supervisor":
        if self.probe is None:
            self.probe = make_probe()
        watch = getattr(self.probe, "watch_xids", None)
        if watch is not None:
            watch(lambda xid, what: self._command("xid", (xid, what)), self._probe_stop)
        self._thread.start()
        return self

    def submit(self, job: dict, listener: JobListener, raw: bytes | None = None) -> None:
        """Queue a job. Its listener hears exactly one on_result. `raw`, when given, is
        the job's exact JSON encoding: it goes to the child as is (no re-encoding)."""
        self._command("submit", (job, listener, time.monotonic(), raw))

    def cancel(self, job_id: str, queued_only: bool = False) -> None:
        """End a job as CANCELLED: dropped if queued, stopped if running (unless
        queued_only)."""
        self._command("cancel", (job_id, queued_only))

    def refresh(self, reason: str = "requested") -> None:
        """Replace the child once it is idle."""
        self._command("refresh", reason)

    def stop(self, grace: float = 0.0) -> None:
        """Stop taking jobs; let running ones finish for `grace` seconds; stop the child."""
        self._command("stop", grace)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_until(self, predicate: Callable[["Supervisor"], bool],
                   timeout: float | None = None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once a child is ready; False if the worker failed or the time ran out."""
        self.wait_until(lambda s: s.child_state in (ChildState.READY, ChildState.BUSY)
                        or s.state is not WorkerState.RUNNING, timeout)
        return self.child_state in (ChildState.READY, ChildState.BUSY)

    @property
    def child_state(self) -> ChildState | None:
        child = self.child
        return child.state if child else None

    @property
    def child_pid(self) -> int | None:
        child = self.child
        return child.proc.pid if child else None

    def snapshot(self) -> dict:
        child = self.child
        return {
            "state": self.state.value,
            "child": None if child is None else {
                "pid": child.proc.pid, "state": child.state.value, "kind": child.kind,
                "mode": child.mode, "concurrency": child.concurrency,
                "preloaded": child.preloaded,
                "jobs_run": child.jobs_run, "rss_bytes": child.rss},
            "memory": self._memory(child),
            "restarts": max(0, self.spawns - 1),
            "jobs": {"pending": len(self.pending), "in_progress": len(self.in_flight),
                     "finished": self.jobs_finished},
            "failure": self.failure_message,
        }

    def _memory(self, child: "_Child | None") -> dict:
        try:
            reading = self.probe.read(child.proc.pid if child else None)
        except Exception as exc:       # a monitor must never break the worker
            return {"probe": "error", "error": str(exc)}
        out = reading.to_dict()
        out["baseline_mb"] = self.baseline_mb
        out["child_torch"] = child.torch if child else None
        return out

    # --- the loop ------------------------------------------------------------------------

    def _command(self, name: str, arg: Any) -> None:
        self._commands.append((name, arg))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass   # the pipe is full of wake-ups already, or we are closed

    def _loop(self) -> None:
        try:
            while True:
                self._run_commands()
                if self._shutdown_at is not None and self.child is None:
                    break
                self._ensure_child()
                self._dispatch()
                exited = False
                for key, events in self._sel.select(self._timeout()):
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif key.data == "ctrl":
                        if events & selectors.EVENT_WRITE:
                            self._flush()
                        if events & selectors.EVENT_READ:
                            self._read()
                    elif key.data == "exit":
                        exited = True
                if exited:        # last: the channel's final messages are read first
                    self._on_exit()
                self._check_clocks()
        except Exception:
            log.exception("supervisor loop failed")
            self._fail_all(Reason.REFUSED, "WorkerError", "the worker's supervisor failed")
            if self.child is not None:
                self.child.proc.close()
            raise
        finally:
            self._probe_stop.set()
            if self.state is WorkerState.RUNNING:
                self.state = WorkerState.STOPPED
            self._notify()
            self._sel.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _run_commands(self) -> None:
        while self._commands:
            name, arg = self._commands.popleft()
            getattr(self, f"_cmd_{name}")(arg)

    def _cmd_submit(self, arg) -> None:
        given, listener, submitted, raw = arg
        try:
            job = validate_job(given)
        except JobError as exc:
            job_id = given.get("id") if isinstance(given, dict) and \
                isinstance(given.get("id"), str) else "unknown"
            self._report(_Job({"id": job_id}, listener, submitted),
                         self._refusal(job_id, str(exc)))
            return
        tracked = _Job(job, listener, submitted, raw=raw)
        if self.state is not WorkerState.RUNNING or self._shutdown_at is not None:
            self._report(tracked, self._refusal(job["id"], self._unavailable()))
            return
        if tracked.id in self._active_ids:
            self._report(tracked, self._refusal(tracked.id, "a job with this id is already "
                                                            "queued or running"), counted=False)
            return
        self._active_ids.add(tracked.id)
        self.pending.append(tracked)

    def _cmd_cancel(self, arg) -> None:
        job_id, queued_only = arg
        for tracked in self.pending:
            if tracked.id == job_id:
                self.pending.remove(tracked)
                self._report(tracked, self._ended(tracked, JobState.CANCELLED,
                                                  Reason.CANCELLED, "cancelled before it started"))
                return
        tracked = self.in_flight.get(job_id)
        if tracked is not None and not queued_only:
            self._abandon(tracked, JobState.CANCELLED, Reason.CANCELLED, "cancelled")

    def _cmd_refresh(self, reason: str) -> None:
        if self.child is not None and self.child.refresh_reason is None:
            self.child.refresh_reason = reason

    def _cmd_xid(self, arg) -> None:
        xid, what = arg
        if what == "xid" and classify_xid(xid) == "replace":
            log.warning("GPU reported application Xid %d: the worker process's CUDA context "
                        "is poisoned; replacing it after the running job", xid)
            self._cmd_refresh(f"GPU Xid {xid}")
            return
        self.state = WorkerState.BROKEN
        self.failure_message = (f"the GPU is unhealthy ({what} {xid if xid >= 0 else ''})"
                                .replace(" )", ")"))
        log.error("%s: no more jobs; the platform should replace this worker",
                  self.failure_message)
        self._fail_all(Reason.REFUSED, "GpuUnhealthy", self.failure_message)
        if self.child is not None:
            self._begin_stop(self.failure_message, interrupt=True)
        self._notify()

    def _cmd_stop(self, grace: float) -> None:
        if self._shutdown_at is None:
            self._shutdown_at = time.monotonic() + max(0.0, grace)
            for tracked in list(self.pending):
                self._report(tracked, self._refusal(tracked.id, "the worker is shutting down"))
            self.pending.clear()

    # --- child lifecycle -----------------------------------------------------------------

    def _ensure_child(self) -> None:
        if (self.child is not None or self.state is not WorkerState.RUNNING
                or self._shutdown_at is not None):
            return
        settings = self.settings
        self.baseline_mb = self._device_used()
        proc = self.spawner.spawn(self.target, settings)
        self.spawns += 1
        pump = OutputPump({proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"},
                          lambda: self._running_ids, self.output_sink)
        pump.start()
        now = time.monotonic()
        self.child = _Child(proc, pump, now + settings.setup_timeout
                            if settings.setup_timeout > 0 else None, last_beat=now)
        os.set_blocking(proc.fd, False)
        self._sel.register(proc.fd, selectors.EVENT_READ, "ctrl")
        self._sel.register(proc.sentinel, selectors.EVENT_READ, "exit")
        log.debug("child %d starting (%s)", proc.pid, self.spawner.method)
        self._notify()

    def _begin_stop(self, reason: str, unplanned: bool = False, interrupt: bool = False) -> None:
        """Cooperative first: a stop message, and SIGUSR1 to interrupt a handler running in
        the child's main thread (or its setup). Then SIGTERM to the group, then SIGKILL,
        stop_grace apart."""
        child = self.child
        if child is None or child.stop_reason is not None:
            return
        if interrupt or child.state is ChildState.STARTING:
            child.proc.signal(signal.SIGUSR1)
        child.stop_reason = reason
        child.stop_unplanned = unplanned
        child.state = ChildState.STOPPING
        child.stop_step = 0
        child.stop_next = time.monotonic() + self.settings.stop_grace
        self._send(P.Stop(reason))
        log.info("stopping child %d: %s", child.proc.pid, reason)
        self._notify()

    def _escalate(self, child: _Child) -> None:
        child.stop_step += 1
        sig = signal.SIGTERM if child.stop_step == 1 else signal.SIGKILL
        log.warning("child %d did not stop within %.1fs; sending %s to its process group",
                    child.proc.pid, self.settings.stop_grace, sig.name)
        child.proc.signal_group(sig)
        child.stop_next = (time.monotonic() + self.settings.stop_grace
                           if child.stop_step == 1 else None)

    def _on_exit(self) -> None:
        child = self.child
        self._read()                      # results written before the exit still count
        self._sel.unregister(child.proc.fd)
        self._sel.unregister(child.proc.sentinel)
        code = child.proc.exitcode()
        child.proc.close()                # SIGKILLs leftovers in its group
        child.pump.finish()
        self.child = None
        self._running_ids = ()
        how = describe_exit(code)
        now = time.monotonic()

        if child.state is ChildState.STARTING or child.setup_error is not None or (
                child.stop_reason == "setup timeout"):
            if child.stop_reason == "setup timeout":
                message = (f"setup did not finish within {self.settings.setup_timeout:g}s "
                           "(WORKER_SETUP_TIMEOUT)")
            elif child.setup_error is not None:
                message = child.setup_error[0]
            elif self._shutdown_at is not None:
                message = None            # stopped during setup on purpose
            else:
                message = f"the worker process {how} during setup"
            if message is not None:
                self._setup_failed(message, child)
            self._notify()
            return

        if child.stop_reason is None or child.stop_unplanned:
            self.deaths.append(now)
            while self.deaths and now - self.deaths[0] > self.settings.restart_window:
                self.deaths.popleft()
        reason_text = (f"the worker process {how} during the job" if child.stop_reason is None
                       else f"the worker process was stopped ({child.stop_reason}) during the job")
        for tracked in sorted(self.in_flight.values(), key=lambda t: t.started, reverse=True):
            del self.in_flight[tracked.id]
            if child.stop_reason is None:
                tracked.crashes += 1
                if tracked.crashes < self.settings.job_max_crashes:
                    log.warning("job %s: %s; retrying on a fresh child (%d/%d)", tracked.id,
                                reason_text, tracked.crashes, self.settings.job_max_crashes)
                    self.pending.appendleft(tracked)
                    continue
                text = reason_text if tracked.crashes == 1 else (
                    f"{reason_text}; it has now killed the worker process {tracked.crashes} times")
            else:
                text = reason_text
            log.error("job %s failed: %s", tracked.id, text)
            self._report(tracked, self._ended(tracked, JobState.FAILED, Reason.WORKER_LOST, text,
                                              "WorkerLost"))
        if child.stop_reason is None:
            log.error("child %d %s", child.proc.pid, how)
        if len(self.deaths) >= self.settings.restart_limit:
            self.state = WorkerState.BROKEN
            self.failure_message = (f"the worker process died {len(self.deaths)} times within "
                                    f"{self.settings.restart_window:g}s; not respawning "
                                    "(WORKER_RESTART_LIMIT)")
            log.error(self.failure_message)
            self._fail_all(Reason.REFUSED, "WorkerBroken", self.failure_message)
        self._notify()

    def _setup_failed(self, message: str, child: _Child) -> None:
        self.state = WorkerState.SETUP_FAILED
        tail = "\n".join(child.pump.tail)
        details = child.setup_error[1] if child.setup_error else ""
        self.failure_message = message
        text = f"handler setup failed: {message}"
        if details:
            text += "\n" + details.rstrip()
        elif tail:
            text += "\nlast output of the worker process:\n" + tail
        log.error(text)
        self._fail_all(Reason.REFUSED, "SetupFailed", f"handler setup failed: {message}",
                       details or tail)

    # --- messages from the child ---------------------------------------------------------

    def _read(self) -> None:
        child = self.child
        while True:
            try:
                data = os.read(child.proc.fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                return
            for frame in child.reader.feed(data):
                self._handle(child, P.decode(frame))

    def _handle(self, child: _Child, msg: P.Message) -> None:
        child.last_beat = time.monotonic()
        if isinstance(msg, P.Done):
            self._on_done(child, msg)
        elif isinstance(msg, P.Chunk):
            tracked = self.in_flight.get(msg.job_id)
            if tracked is not None:
                self._call(tracked.listener.on_chunk, msg.job_id, msg.value)
        elif isinstance(msg, P.Progress):
            tracked = self.in_flight.get(msg.job_id)
            if tracked is not None:
                self._call(tracked.listener.on_progress, msg.job_id, msg.value)
        elif isinstance(msg, P.Heartbeat):
            child.rss = msg.rss
            child.torch = msg.gpu
        elif isinstance(msg, P.Ready):
            self._on_ready(child, msg)
        elif isinstance(msg, P.SetupFailed):
            child.setup_error = (msg.message, msg.traceback)

    def _on_ready(self, child: _Child, msg: P.Ready) -> None:
        if child.state is not ChildState.STARTING:
            return
        child.state = ChildState.READY
        child.kind, child.mode, child.concurrency = msg.kind, msg.mode, msg.concurrency
        child.preloaded = msg.preloaded
        self.handler_kind = msg.kind
        if msg.config:
            self.settings = self.settings.with_config(msg.config)
        self.last_ready_s = time.monotonic() - child.proc.started
        preload = self.spawner.preload
        missing = [m for m in preload if m not in msg.preloaded]
        log.info("child %d ready in %.2fs (handler: %s, %s, concurrency %d%s)",
                 child.proc.pid, self.last_ready_s, child.kind, child.mode, child.concurrency,
                 f"; preloaded: {', '.join(msg.preloaded)}" if msg.preloaded else "")
        if missing and self.spawner.method == "forkserver":
            log.warning("preload modules not loaded in the forkserver (import failed?): %s",
                        ", ".join(missing))
        self._notify()

    def _on_done(self, child: _Child, msg: P.Done) -> None:
        child.concurrency = max(1, msg.concurrency)
        child.cancels.pop(msg.job_id, None)
        tracked = self.in_flight.pop(msg.job_id, None)
        # Output still in the pipe belongs to the job that just ended, not to nobody.
        self._running_ids = tuple(self.in_flight) or (msg.job_id,)
        if tracked is None:
            return   # already ended by the worker (timeout, cancel): this is the child's ack
        child.jobs_run += 1
        now = time.monotonic()
        result = JobResult(msg.job_id, JobState(msg.state), Reason(msg.reason), msg.body,
                           msg.refresh, int((tracked.started - tracked.submitted) * 1000),
                           int((now - tracked.started) * 1000))
        if msg.peak_vram_mb is not None:
            result.extra["peak_vram_mb"] = msg.peak_vram_mb
        self._report(tracked, result)
        log.log(logging.INFO if result.state is JobState.COMPLETED else logging.WARNING,
                "job %s (%s) in %d ms%s", result.state.value, result.reason.value,
                result.execution_ms, "" if msg.peak_vram_mb is None else
                f", peak VRAM {msg.peak_vram_mb:.0f} MiB", extra={"job_id": msg.job_id})
        settings = self.settings
        if child.refresh_reason is None and result.state is JobState.FAILED:
            child.refresh_reason = cuda_failure(result.error, settings.refresh_on_oom)
        if child.refresh_reason is None:
            if msg.refresh:
                child.refresh_reason = "the job asked for refresh_worker"
            elif settings.refresh_worker:
                child.refresh_reason = "refresh_worker is set"
            elif settings.max_jobs_per_child and child.jobs_run >= settings.max_jobs_per_child:
                child.refresh_reason = f"it ran {child.jobs_run} jobs (WORKER_MAX_JOBS_PER_CHILD)"
        if not self.in_flight and child.state is ChildState.BUSY:
            child.state = ChildState.READY
            if child.refresh_reason is None:
                child.refresh_reason = self._memory_policy(child)

    def _memory_policy(self, child: _Child) -> str | None:
        """Between jobs: is the child over a memory limit? (Never during a job.)"""
        s = self.settings
        vram_limit = s.max_vram_mb
        if s.max_rss_mb <= 0 and vram_limit <= 0 and s.max_vram_fraction <= 0:
            return None
        try:
            reading = self.probe.read(child.proc.pid)
        except Exception as exc:
            log.warning("memory probe failed: %s", exc)
            return None
        if s.max_rss_mb > 0 and reading.child_rss_mb > s.max_rss_mb:
            return (f"its resident memory is {reading.child_rss_mb:.0f} MiB "
                    f"(WORKER_MAX_RSS_MB={s.max_rss_mb:g})")
        if s.max_vram_fraction > 0 and reading.device_total_mb:
            fraction_limit = s.max_vram_fraction * reading.device_total_mb
            vram_limit = min(vram_limit, fraction_limit) if vram_limit else fraction_limit
        if vram_limit > 0:
            grown = max(reading.device_used_mb - self.baseline_mb,
                        (child.torch or {}).get("reserved_mb", 0.0))
            if grown > vram_limit:
                return (f"GPU memory in use grew {grown:.0f} MiB over its baseline of "
                        f"{self.baseline_mb:.0f} MiB (limit {vram_limit:.0f} MiB)")
        return None

    def _device_used(self) -> float:
        try:
            return self.probe.read(None).device_used_mb
        except Exception:
            return 0.0

    # --- jobs ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        child = self.child
        if child is None:
            return
        if child.state in (ChildState.READY, ChildState.BUSY) and child.refresh_reason \
                and not self.in_flight:
            log.info("refreshing the worker process: %s", child.refresh_reason)
            self._begin_stop(f"refresh: {child.refresh_reason}")
            return
        while (self.pending and child.state in (ChildState.READY, ChildState.BUSY)
               and child.refresh_reason is None and self._shutdown_at is None
               and len(self.in_flight) < child.concurrency):
            tracked = self.pending.popleft()
            now = time.monotonic()
            tracked.started = now
            limit = execution_timeout(tracked.job, self.settings.job_timeout)
            tracked.deadline = now + limit if limit > 0 else None
            try:
                self._send(P.Run(tracked.job, tracked.raw))
                tracked.raw = None      # sent: a retry after a crash re-encodes the dict
            except (TypeError, ValueError) as exc:
                self._report(tracked, self._refusal(tracked.id, f"the job is not JSON: {exc}"))
                continue
            self.in_flight[tracked.id] = tracked
            self._running_ids = tuple(self.in_flight)
            child.state = ChildState.BUSY
            self._call(tracked.listener.on_start, tracked.id)

    def _abandon(self, tracked: _Job, state: JobState, reason: Reason, text: str) -> None:
        """End a running job now (timeout or cancel) and make sure its work stops."""
        child = self.child
        del self.in_flight[tracked.id]
        self._running_ids = tuple(self.in_flight)
        error_type = "TimedOut" if state is JobState.TIMED_OUT else "Cancelled"
        self._report(tracked, self._ended(tracked, state, reason, text, error_type))
        if child is None or child.state is ChildState.STOPPING:
            return
        if child.mode == "inline":
            self._begin_stop(f"job {tracked.id} {reason.value}", interrupt=True)
        else:
            self._send(P.Cancel(tracked.id))
            child.cancels[tracked.id] = time.monotonic() + self.settings.stop_grace
        if not self.in_flight and child.state is ChildState.BUSY:
            child.state = ChildState.READY

    def _check_clocks(self) -> None:
        now = time.monotonic()
        child = self.child
        for tracked in list(self.in_flight.values()):
            if tracked.deadline is not None and now >= tracked.deadline:
                limit = tracked.deadline - tracked.started
                self._abandon(tracked, JobState.TIMED_OUT, Reason.TIMED_OUT,
                              f"the job ran longer than its execution timeout of {limit:g}s")
        if child is None:
            return
        if child.state is ChildState.STOPPING:
            if child.stop_next is not None and now >= child.stop_next:
                self._escalate(child)
            return
        if child.state is ChildState.STARTING:
            if child.setup_deadline is not None and now >= child.setup_deadline:
                self._begin_stop("setup timeout")
            elif self._shutdown_at is not None:
                self._begin_stop("shutdown")
            return
        hb = self.settings.heartbeat_timeout
        if hb > 0 and now - child.last_beat > hb:
            self._begin_stop(f"no heartbeat for {now - child.last_beat:.0f}s (hung?)",
                             unplanned=True, interrupt=True)
            return
        for job_id, deadline in list(child.cancels.items()):
            if now >= deadline:
                self._begin_stop(f"job {job_id} did not stop when cancelled", interrupt=True)
                return
        if self._shutdown_at is not None and (not self.in_flight or now >= self._shutdown_at):
            self._begin_stop("shutdown", interrupt=bool(self.in_flight))

    def _timeout(self) -> float | None:
        times = [t.deadline for t in self.in_flight.values() if t.deadline is not None]
        child = self.child
        if child is not None:
            if child.state is ChildState.STOPPING:
                times.append(child.stop_next)
            elif child.state is ChildState.STARTING:
                times.append(child.setup_deadline)
            else:
                if self.settings.heartbeat_timeout > 0:
                    times.append(child.last_beat + self.settings.heartbeat_timeout)
                times.extend(child.cancels.values())
            if self._shutdown_at is not None:
                times.append(self._shutdown_at)
        times = [t for t in times if t is not None]
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    # --- sending -------------------------------------------------------------------------

    def _send(self, msg: P.Message) -> None:
        child = self.child
        data = msg.encode()
        if child.outbox:
            child.outbox += data
            return
        try:
            n = os.write(child.proc.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return       # the child is gone; its exit is handled by the sentinel
        if n < len(data):
            child.outbox += data[n:]
            self._sel.modify(child.proc.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, "ctrl")

    def _flush(self) -> None:
        child = self.child
        try:
            n = os.write(child.proc.fd, child.outbox)
        except BlockingIOError:
            return
        except OSError:
            child.outbox.clear()
            n = 0
        del child.outbox[:n]
        if not child.outbox:
            self._sel.modify(child.proc.fd, selectors.EVENT_READ, "ctrl")

    # --- reporting -----------------------------------------------------------------------

    def _report(self, tracked: _Job, result: JobResult, counted: bool = True) -> None:
        if tracked.finished:
            return
        tracked.finished = True
        if counted:
            self._active_ids.discard(tracked.id)
        self.jobs_finished += 1
        self._call(tracked.listener.on_result, result)

    def _call(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("a job listener failed")

    def _ended(self, tracked: _Job, state: JobState, reason: Reason, text: str,
               error_type: str = "Cancelled") -> JobResult:
        result = failure(tracked.id, state, reason, error_type, text,
                         self.settings.worker_id, self.settings.hostname)
        now = time.monotonic()
        if tracked.started:
            result.delay_ms = int((tracked.started - tracked.submitted) * 1000)
            result.execution_ms = int((now - tracked.started) * 1000)
        return result

    def _refusal(self, job_id: str, text: str) -> JobResult:
        return failure(job_id, JobState.FAILED, Reason.REFUSED, "JobRefused", text,
                       self.settings.worker_id, self.settings.hostname)

    def _unavailable(self) -> str:
        if self.state is WorkerState.RUNNING:
            return "the worker is shutting down"
        return f"the worker cannot run jobs: {self.failure_message}"

    def _fail_all(self, reason: Reason, error_type: str, text: str, details: str = "") -> None:
        for tracked in list(self.pending) + list(self.in_flight.values()):
            self._report(tracked, failure(tracked.id, JobState.FAILED, reason, error_type, text,
                                          self.settings.worker_id, self.settings.hostname,
                                          details))
        self.pending.clear()
        self.in_flight.clear()
        self._running_ids = ()
