"""The child's job loop: receives jobs from the parent, runs them, sends events back.

How a job runs depends on the handler:
- async handlers run as asyncio tasks (several at once when concurrency > 1);
- sync handlers with a concurrency_modifier run in threads;
- other sync handlers run inline in the main thread (the fast path), where a SIGUSR1
  from the parent can interrupt them.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import select
import signal
import threading
import traceback
from typing import Any

from .. import protocol as P
from ..config import Settings, config_keys
from ..jobs import JobState, Reason, exception_record
from ..protocol import HandlerMode
from .handlers import Interrupted, Outcome, detect_kind, run_async, run_sync
from .memory import reset_peak, rss, torch_memory

_current: "ChildRuntime | None" = None


def current() -> "ChildRuntime | None":
    """The runtime when this process is a gpu-worker child, else None."""
    return _current


def start(config: dict) -> None:
    """start() as the handler module sees it in a child (also the official SDK's, which
    runpod_compat redirects here): the job loop runs inside this call."""
    if _current is None:
        raise RuntimeError("not a gpu-worker child process")
    _current.serve(config)


def progress_update(job: Any, progress: Any) -> None:
    if _current is None:
        raise RuntimeError("not a gpu-worker child process")
    _current.progress(job, progress)


class ChildRuntime:
    def __init__(self, fd: int, settings: Settings, preloaded: list):
        self.fd = fd
        self.settings = settings
        self.preloaded = preloaded
        self.served = False
        self.stopping = False
        self.inline_job: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reader = P.FrameReader()
        self._wlock = threading.Lock()
        self._tasks: dict[str, asyncio.Task] = {}
        self._threads: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self._done: asyncio.Future | None = None

    # --- plumbing -------------------------------------------------------------------------

    def activate(self) -> None:
        global _current
        _current = self
        signal.signal(signal.SIGUSR1, self._on_stop_signal)
        # The parent owns shutdown: a terminal's Ctrl-C is for it, not for us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(self, msg: P.Message) -> None:
        data = msg.encode()
        with self._wlock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    select.select([], [self.fd], [])
                    continue
                view = view[n:]

    def record(self, exc: BaseException) -> str:
        return exception_record(exc, self.settings.worker_id, self.settings.hostname)

    def watch(self, lifeline_fd: int) -> None:
        """Heartbeat thread; also ends the whole process group if the parent dies."""
        def run():
            interval = max(0.05, self.settings.heartbeat_interval)
            while True:
                ready, _, _ = select.select([lifeline_fd], [], [], interval)
                if ready:  # EOF: the parent is gone; take our grandchildren with us
                    try:
                        os.killpg(0, signal.SIGKILL)
                    finally:
                        os._exit(70)
                try:
                    self.send(P.Heartbeat(rss(), torch_memory()))
                except OSError:
                    os._exit(70)
        threading.Thread(target=run, name="gpu-worker-heartbeat", daemon=True).start()

    # --- start() in the child ------------------------------------------------------------

    def serve(self, config: dict) -> None:
        """Called by start(): setup is over; announce readiness and run jobs until told
        to stop."""
        if self.served:
            raise RuntimeError("start() was called twice in one worker process")
        if not isinstance(config, dict) or "handler" not in config:
            raise TypeError("start() needs a dict with a 'handler' key, e.g. "
                            "start({'handler': handler})")
        self.served = True
        self.handler = config["handler"]
        self.kind = detect_kind(self.handler)
        self.modifier = config.get("concurrency_modifier")
        if self.modifier is not None and not callable(self.modifier):
            raise TypeError("concurrency_modifier must be a function: int -> int")
        overrides = {k: v for k, v in config.items() if k in config_keys()}
        self.settings = self.settings.with_config(overrides)
        self.aggregate = self.settings.return_aggregate_stream
        if self.kind.is_async:
            self.mode = HandlerMode.TASKS
        elif self.modifier is not None:
            self.mode = HandlerMode.THREADS
        else:
            self.mode = HandlerMode.INLINE
        self.concurrency = self._concurrency(1)
        self.send(P.Ready(self.kind, self.mode, self.concurrency, overrides, self.preloaded))
        if not self.stopping:
            asyncio.run(self._main())

    def _concurrency(self, current: int) -> int:
        if self.modifier is None:
            return 1
        try:
            return max(1, int(self.modifier(current)))
        except Exception:
            traceback.print_exc()
            return max(1, current)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        os.set_blocking(self.fd, False)
        self.loop.add_reader(self.fd, self._on_readable)
        try:
            await self._done
        finally:
            self.loop.remove_reader(self.fd)
            for task in list(self._tasks.values()):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks.values()), timeout=self.settings.stop_grace)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:  # the parent closed the channel
            self._finish()
            return
        for frame in self._reader.feed(data):
            msg = P.decode(frame)
            if isinstance(msg, P.Run):
                self._start_job(msg.job)
            elif isinstance(msg, P.Cancel):
                self._cancel(msg.job_id)
            elif isinstance(msg, P.Stop):
                self._stop()
            if self.stopping:
                break

    # --- running jobs --------------------------------------------------------------------

    def _start_job(self, job: dict) -> None:
        job_id = job["id"]
        reset_peak()
        if self.mode is HandlerMode.INLINE:
            self.inline_job = job_id
            try:
                outcome = run_sync(self.handler, self.kind, job, self._emitter(job_id),
                                   self.aggregate, self.record)
            except Interrupted:
                self._finish()
                return
            finally:
                self.inline_job = None
            self._report(job_id, outcome)
        elif self.mode is HandlerMode.THREADS:
            threading.Thread(target=self._run_thread, args=(job,), daemon=True,
                             name=f"job-{job_id}").start()
        else:
            self._tasks[job_id] = self.loop.create_task(self._run_task(job))

    def _run_thread(self, job: dict) -> None:
        job_id = job["id"]
        self._threads[job_id] = threading.get_ident()
        try:
            outcome = run_sync(self.handler, self.kind, job, self._emitter(job_id),
                               self.aggregate, self.record)
        except Interrupted:
            outcome = Outcome(JobState.CANCELLED, Reason.CANCELLED, {})
        finally:
            self._threads.pop(job_id, None)
        self._report(job_id, outcome)

    async def _run_task(self, job: dict) -> None:
        job_id = job["id"]
        try:
            outcome = await run_async(self.handler, self.kind, job, self._emitter(job_id),
                                      self.aggregate, self.record)
        except (asyncio.CancelledError, Interrupted):
            outcome = Outcome(JobState.CANCELLED, Reason.CANCELLED, {})
        finally:
            self._tasks.pop(job_id, None)
        if job_id in self._cancelled or outcome.state is not JobState.CANCELLED:
            self._cancelled.discard(job_id)
            self._report(job_id, outcome)
        else:  # a CancelledError the handler raised by itself is a failure, not a cancel
            self._report(job_id, Outcome(JobState.FAILED, Reason.HANDLER_ERROR,
                                         {"error": self.record(asyncio.CancelledError())}))

    def _emitter(self, job_id: str):
        def emit(chunk: Any) -> None:
            try:
                self.send(P.Chunk(job_id, chunk))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"a stream chunk is not JSON-serialisable: {exc}") from None
        return emit

    def _report(self, job_id: str, outcome: Outcome) -> None:
        if self.stopping:
            return  # the parent has already ended this job
        self.concurrency = self._concurrency(self.concurrency)
        peak = torch_memory()
        msg = P.Done(job_id, outcome.state, outcome.reason, outcome.body, outcome.refresh,
                     self.concurrency, peak and peak["peak_mb"])
        try:
            self.send(msg)
        except (TypeError, ValueError) as exc:
            error = self.record(TypeError(
                f"the handler returned a value that is not JSON-serialisable: {exc}"))
            self.send(P.Done(job_id, JobState.FAILED, Reason.HANDLER_ERROR, {"error": error},
                             outcome.refresh, self.concurrency))

    def progress(self, job: Any, value: Any) -> None:
        job_id = job.get("id") if isinstance(job, dict) else str(job)
        try:
            self.send(P.Progress(job_id, value))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"progress_update value is not JSON-serialisable: {exc}") from None

    # --- cancel and stop ------------------------------------------------------------------

    def _cancel(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()
            return
        ident = self._threads.get(job_id)
        if ident is not None:
            _raise_in_thread(ident, Interrupted)

    def _stop(self) -> None:
        self.stopping = True
        for ident in list(self._threads.values()):
            _raise_in_thread(ident, Interrupted)
        self._finish()

    def _finish(self) -> None:
        self.stopping = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _on_stop_signal(self, signum, frame) -> None:
        """SIGUSR1 from the parent: the cooperative first step of a stop."""
        self.stopping = True
        if self.inline_job is not None or not self.served:
            raise Interrupted("the worker is stopping this process")
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self._stop)
            except RuntimeError:
                pass   # the loop has already closed: we are on our way out


def _raise_in_thread(ident: int, exc_type: type) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
