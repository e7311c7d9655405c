"""The child's job loop: receives jobs from the parent, runs them, sends events back.

How a job runs depends on the handler:
- async handlers run as asyncio tasks (several at once when concurrency > 1);
- sync handlers with a concurrency_modifier run in threads;
- other sync handlers run inline in the main thread (the fast path), where a SIGUSR1
  from the parent can interrupt them.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .. import protocol as P
from ..config import Settings, config_keys, start_key_notes
from ..jobs import JobState, Reason, exception_record
from ..jsonlimits import MAX_DEPTH, nesting
from ..protocol import HandlerMode
from . import beside, code_files, descendants, fitness_run, gpu_check, joblog, sdk_hooks
from .handlers import Interrupted, Outcome, detect_kind, run_async, run_sync
from .memory import reset_peak, rss, torch_memory

_current: "ChildRuntime | None" = None


def current() -> "ChildRuntime | None":
    """The runtime when this process is a gpu-worker child, else None."""
    return _current


class Recorded(BaseException):
    """start() during a warm import (warm_import.py): its config, recorded; it unwinds the
    module's body where a child's job loop would have begun."""

    def __init__(self, config: Any):
        super().__init__("start() recorded for warm refresh")
        self.config = config


_recording = False


def recording(on: bool | None = None) -> bool:
    """Whether start() records instead of serving (the forkserver's warm import)."""
    global _recording
    if on is not None:
        _recording = on
    return _recording


def start(config: dict) -> None:
    """start() as the handler module sees it in a child (also the official SDK's, which
    runpod_compat redirects here): the job loop runs inside this call."""
    if _current is None:
        if _recording:
            raise Recorded(config)
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
        self.checks = False             # run the fitness checks before Ready
        self.ready_at = 0.0
        self.stopping = False
        self.inline_job: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reader = P.FrameReader()
        self._wlock = threading.Lock()
        self._runs: dict[str, int] = {}            # job id -> its run (one per id at a time)
        self._tasks: dict[int, asyncio.Task] = {}  # run -> task
        self._threads: dict[int, int] = {}         # run -> thread ident
        self._cancelled: set[int] = set()
        self._done: asyncio.Future | None = None
        self.pid = os.getpid()

    # --- plumbing -------------------------------------------------------------------------

    def activate(self) -> None:
        global _current
        _current = self
        os.register_at_fork(after_in_child=self._forked)
        signal.signal(signal.SIGUSR1, self._on_stop_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # a terminal's Ctrl-C: the parent's

    def _forked(self) -> None:
        """In a process forked from this one (the handler's os.fork(), a fork-started
        multiprocessing worker): the control channel is not its to read, write or hold
        open after this child has gone. /dev/null takes its place. If the fork comes back
        into the job loop (a handler that returned in the fork), it leaves (`_report`)."""
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, self.fd)
            os.close(null)
        except OSError:
            pass

    def _leave_if_forked(self) -> None:
        if os.getpid() != self.pid:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(0)

    def send(self, msg: P.Message) -> None:
        self.send_bytes(msg.encode())

    def send_checked(self, msg: P.Message, levels: int) -> None:
        """Send a message that carries a value from user code: any failure to encode it
        (not JSON, a number JSON cannot hold, a lone surrogate, nesting beyond MAX_DEPTH
        below the message's own `levels`) raises ValueError with the reason."""
        try:
            data = msg.encode()
        except Exception as exc:   # noqa: BLE001 - TypeError, ValueError, RecursionError...
            raise ValueError(f"it is not JSON-serialisable ({type(exc).__name__}: {exc})"[:800]) \
                from None
        if nesting(data, MAX_DEPTH + levels) > MAX_DEPTH + levels:
            raise ValueError(f"it nests arrays/objects more than {MAX_DEPTH} levels deep")
        self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
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
            interval = self.settings.heartbeat_period    # for the child's life
            while True:
                ready, _, _ = select.select([lifeline_fd], [], [], interval)
                if ready:  # EOF: the parent is gone; take our descendants with us
                    try:
                        descendants.end_all()       # the ones outside our group too
                        os.killpg(0, signal.SIGKILL)
                    finally:
                        os._exit(70)
                try:
                    self.send(P.Heartbeat(rss(), torch_memory()))
                except OSError:
                    os._exit(70)
                descendants.tick()          # the orphans it adopted, reaped
        threading.Thread(target=run, name="gpu-worker-heartbeat", daemon=True).start()

    # --- start() in the child ------------------------------------------------------------

    def serve(self, config: dict) -> None:
        """Called by start(): setup is over; announce readiness and run jobs until told
        to stop."""
        if self.served:
            raise RuntimeError("start() was called twice in one worker process")
        if not isinstance(config, dict) or "handler" not in config:
            raise TypeError("start() needs a dict with a 'handler' key: start({'handler': f})")
        self.handler = config["handler"]
        self.kind = detect_kind(self.handler)
        self.modifier = config.get("concurrency_modifier")
        if self.modifier is not None and not callable(self.modifier):
            raise TypeError("concurrency_modifier must be a function: int -> int")
        config.setdefault("rp_args", self._rp_args())     # what the SDK's start() fills in
        overrides = {k: v for k, v in config.items() if k in config_keys()}
        self.settings = self.settings.with_config(overrides)   # a bad value: setup fails
        self.ready_at = time.perf_counter()
        if self.checks:      # these raise out of start(): a setup failure
            fitness_run.run(self.settings.handler_checks, self.settings.gpu_check,
                            self.settings.require_gpu)
        beside.check()       # a spare that could not replace the active child
        warm_up(config.get("warmup"))
        self.served = True
        self.aggregate = self.settings.return_aggregate_stream
        if self.kind.is_async:
            self.mode = HandlerMode.TASKS
        elif self.modifier is not None:
            self.mode = HandlerMode.THREADS
        else:
            self.mode = HandlerMode.INLINE
        self.concurrency = self._concurrency(1)
        self.send(P.Ready(self.kind, self.mode, self.concurrency, overrides, self.preloaded,
                          code_files.report() if self.settings.reload else None,
                          start_key_notes(config)))
        if not self.stopping:
            asyncio.run(self._main())

    def _rp_args(self) -> dict:
        s = self.settings
        test_input = None
        if s.test_input is not None:
            try:
                test_input = json.loads(s.test_input)
            except ValueError:
                pass
        return {"rp_log_level": s.log_level, "rp_debugger": s.rp_debugger,
                "rp_serve_api": s.serve_api, "rp_api_port": s.api_port,
                "rp_api_concurrency": 1, "rp_api_host": s.api_host, "test_input": test_input}

    def _concurrency(self, current: int) -> int:
        if self.modifier is None:
            return 1
        try:
            return max(1, int(self.modifier(current)))
        except BaseException:     # noqa: B902 - user code: never the job's report, nor the loop
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
            frames = self._reader.read_from(self.fd)
        except BlockingIOError:
            return
        if frames is None:  # the parent closed the channel
            self._finish()
            return
        for frame in frames:
            msg = P.decode(frame)
            if isinstance(msg, P.Run):
                try:
                    self._start_job(msg.run, msg.job)
                except Exception as exc:   # noqa: BLE001 - the job's failure, not the loop's
                    self.send(P.Done(msg.run, JobState.FAILED, Reason.HANDLER_ERROR,
                                     {"error": self.record(exc)}, False, self.concurrency))
            elif isinstance(msg, P.Cancel):
                self._cancel(msg.run)
            elif isinstance(msg, P.Stop):
                self._stop()
            elif isinstance(msg, P.Check):
                threading.Thread(target=self._gpu_check, daemon=True,
                                 name="gpu-worker-check").start()
            else:
                self._unreadable(msg)
            if self.stopping:
                break

    def _gpu_check(self) -> None:
        """The GPU check on this process's own CUDA contexts (an application Xid poisons a
        context, and a sticky error shows on its next call); off the loop: it may block."""
        try:
            ok, text = True, gpu_check.check() if gpu_check.expected() else "no GPU here"
        except BaseException as exc:    # noqa: BLE001 - any failure is the check's answer
            ok, text = False, f"{type(exc).__name__}: {exc}"[:1000]
        self.send(P.Checked(ok, text))

    def _unreadable(self, msg: P.Message) -> None:
        """A frame this side cannot read: that run fails; anything else ends the child (the
        parent sees a crash) rather than leaving a job that never ends."""
        if isinstance(msg, P.Garbled) and msg.tag == "run" and msg.run is not None:
            error = self.record(ValueError(f"the job could not be read in the worker "
                                           f"process: {msg.error}"))
            self.send(P.Done(msg.run, JobState.FAILED, Reason.HANDLER_ERROR, {"error": error},
                             False, self.concurrency))
            return
        print(f"gpu-worker: unreadable message from the parent ({msg!r:.300}); exiting",
              file=sys.__stderr__, flush=True)
        os._exit(70)

    # --- running jobs --------------------------------------------------------------------

    def _start_job(self, run: int, job: dict) -> None:
        job_id = job["id"]
        self._runs[job_id] = run
        if len(self._runs) == 1:     # jobs running beside it keep their peak: a job's
            reset_peak()             # peak is the child's while it ran
        if self.mode is HandlerMode.INLINE:
            self.inline_job = run
            token = joblog.current_job.set(job_id)
            try:
                outcome = run_sync(self.handler, self.kind, job, self._emitter(run),
                                   self.aggregate, self.record)
            except Interrupted:
                self._finish()
                return
            finally:
                self.inline_job = None
                joblog.current_job.reset(token)
            self._report(run, job_id, outcome)
            return
        descendants.job_began(run)       # a live child's job: its processes end with it
        if self.mode is HandlerMode.THREADS:
            threading.Thread(target=self._run_thread, args=(run, job), daemon=True,
                             name=f"job-{job_id}").start()
        else:
            self._tasks[run] = self.loop.create_task(self._run_task(run, job))

    def _run_thread(self, run: int, job: dict) -> None:
        job_id = job["id"]
        joblog.current_job.set(job_id)       # a fresh thread: its own context
        self._threads[run] = threading.get_ident()
        try:
            outcome = run_sync(self.handler, self.kind, job, self._emitter(run),
                               self.aggregate, self.record)
        except Interrupted:
            outcome = Outcome(JobState.CANCELLED, Reason.CANCELLED, {})
        finally:
            self._threads.pop(run, None)
        self._report(run, job_id, outcome)

    async def _run_task(self, run: int, job: dict) -> None:
        job_id = job["id"]
        joblog.current_job.set(job_id)       # a task runs in a copy of the context
        try:
            outcome = await run_async(self.handler, self.kind, job, self._emitter(run),
                                      self.aggregate, self.record)
        except (asyncio.CancelledError, Interrupted):
            outcome = Outcome(JobState.CANCELLED, Reason.CANCELLED, {})
        finally:
            self._tasks.pop(run, None)
        if run in self._cancelled or outcome.state is not JobState.CANCELLED:
            self._cancelled.discard(run)
            self._report(run, job_id, outcome)
        else:  # a CancelledError the handler raised by itself is a failure, not a cancel
            self._report(run, job_id, Outcome(JobState.FAILED, Reason.HANDLER_ERROR,
                                              {"error": self.record(asyncio.CancelledError())}))

    def _emitter(self, run: int):
        def emit(chunk: Any) -> None:
            try:
                self.send_checked(P.Chunk(run, chunk), 1)
            except ValueError as exc:
                raise TypeError(f"a stream chunk cannot be sent: {exc}") from None
        return emit

    def _report(self, run: int, job_id: str, outcome: Outcome) -> None:
        self._leave_if_forked()        # a fork of this child reports nothing, runs nothing
        joblog.job_ended(job_id)       # its last partial line, tagged, before its result
        descendants.job_ended(run, outcome.state is JobState.CANCELLED)
        if self._runs.get(job_id) == run:
            del self._runs[job_id]
        if self.stopping:
            return  # the parent has already ended this job
        self.concurrency = self._concurrency(self.concurrency)
        try:
            sdk_hooks.after_job(outcome.body, self.settings.rp_debugger, self.ready_at)
        except BaseException:      # noqa: B902 - the job's result matters more
            traceback.print_exc()
        peak = torch_memory()
        msg = P.Done(run, outcome.state, outcome.reason, outcome.body, outcome.refresh,
                     self.concurrency, peak and peak["peak_mb"], peak)
        try:
            self.send_checked(msg, 2)
        except ValueError as exc:
            what = "stream" if self.kind.streams else "returned value"
            error = self.record(TypeError(f"the handler's {what} cannot be sent back: {exc}"))
            self.send(P.Done(run, JobState.FAILED, Reason.HANDLER_ERROR, {"error": error},
                             outcome.refresh, self.concurrency))

    def progress(self, job: Any, value: Any) -> None:
        job_id = job.get("id") if isinstance(job, dict) else str(job)
        run = self._runs.get(job_id)
        if run is None:
            return     # not a job running here (or it has ended): nobody is listening
        try:
            self.send_checked(P.Progress(run, value), 1)
        except ValueError as exc:
            raise TypeError(f"progress_update value cannot be sent: {exc}") from None

    # --- cancel and stop ------------------------------------------------------------------

    def _cancel(self, run: int) -> None:
        task = self._tasks.get(run)
        if task is not None:
            self._cancelled.add(run)
            task.cancel()
            return
        ident = self._threads.get(run)
        if ident is not None:
            _raise_in_thread(ident, Interrupted)

    def _stop(self) -> None:
        self.stopping = True
        for ident in list(self._threads.values()):
            _raise_in_thread(ident, Interrupted)
        self._finish()

    def _finish(self) -> None:
        self._leave_if_forked()
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


def warm_up(warmup) -> None:
    """start()'s `warmup`: run once in every child (a spare too) after the module body
    and before Ready: move the weights to the device, run one small batch so the kernels
    load, so no job pays for that."""
    if warmup is None:
        return
    if not callable(warmup):
        raise TypeError("start()'s 'warmup' must be a function with no arguments")
    result = warmup()
    if inspect.isawaitable(result):
        async def wait():
            return await result
        asyncio.run(wait())
