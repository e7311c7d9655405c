"""The one-shot local test: `python handler.py` with --test_input or ./test_input.json.

Unlike runpod-python's local mode, the job runs in a real child exactly as in production:
generators are iterated (each chunk printed as it arrives), progress updates are printed,
refresh_worker really replaces the child, and the exit code says how it went.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

from .. import stream_bound
from ..config import Settings
from ..jobs import JobError, JobResult, JobState, error_record, validate_job
from ..parent.supervisor import ChildState, JobListener, Supervisor, WorkerState
from ..version import __version__
from .host import SourceHost

TEST_INPUT_FILE = "test_input.json"


def load_job(test_input: str | None, cwd: str | None = None) -> dict:
    if test_input is None:
        path = os.path.join(cwd or os.getcwd(), TEST_INPUT_FILE)
        if not os.path.isfile(path):
            raise JobError(f"no test input: pass --test_input '<json>' or create {path}")
        with open(path, encoding="utf-8") as f:
            text, source = f.read(), path
    else:
        text, source = test_input, "--test_input"
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise JobError(f"{source} is not valid JSON: {exc}") from None
    try:
        return validate_job(job, default_id="local_test")
    except JobError as exc:
        raise JobError(f"{source}: {exc}") from None


class _Printer(JobListener):
    def __init__(self, out: TextIO, supervisor: Supervisor):
        self.out = out
        self.supervisor = supervisor
        self.chunks = 0
        self.child_pid: int | None = None
        self.result: JobResult | None = None
        self.done = threading.Event()

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_start(self, job_id: str) -> None:
        self.child_pid = self.supervisor.status.child_pid

    def on_progress(self, job_id: str, value: Any) -> None:
        self._print(f"progress: {json.dumps(value, ensure_ascii=False)}")

    def on_chunk(self, job_id: str, value: Any) -> None:
        self.chunks += 1
        self._print(f"chunk {self.chunks}: {json.dumps(value, ensure_ascii=False)}")

    def on_result(self, result: JobResult) -> None:
        self.result = result
        self.done.set()


def run(settings: Settings, target, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        job = load_job(settings.test_input)
        expected = _expected(settings.test_output)
    except JobError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 1
    print(f"--- gpu-worker {__version__} | one-shot test of {target.describe()} "
          f"(job {job['id']}) ---", file=out, flush=True)
    # One job: one child (the first GPU slice), whatever WORKER_CHILDREN says.
    host = SourceHost(settings, target, one_child=True)
    supervisor = host.sup
    printer = _Printer(out, supervisor)
    # A first SIGTERM/SIGINT stops the job's child: the job ends (and is shown) at once.
    host.handle_signals(lambda name: supervisor.stop(0), "the job is stopped")
    host.start()
    supervisor.submit(job, printer)
    printer.done.wait()
    result = printer.result
    try:
        if (result.refresh or supervisor.settings.refresh_worker) and result.state.final \
                and printer.child_pid is not None and not host.signalled.is_set():
            _show_refresh(host, printer.child_pid, out)
    finally:
        host.stop()
    _fit(result, supervisor.settings)
    ok = _show_result(result, out)
    if ok and expected is not _NOTHING:
        ok = _compare(result.output, expected, out)
    return 0 if ok else 1


_NOTHING = object()


def _expected(text: str | None) -> Any:
    if text is None:
        return _NOTHING
    try:
        return json.loads(text)
    except ValueError as exc:
        raise JobError(f"--test_output is not valid JSON: {exc}") from None


def _show_refresh(host: SourceHost, old_pid: int, out: TextIO) -> None:
    t0 = time.monotonic()
    print("refresh_worker: replacing the worker process...", file=out, flush=True)
    supervisor = host.sup
    limit = host.stop_bound(0) + supervisor.settings.setup_timeout   # old one out, new one in
    supervisor.wait_until(lambda s: s.state is not WorkerState.RUNNING or (
        s.child_pid not in (None, old_pid) and s.child_state is ChildState.READY), limit)
    status = supervisor.status
    if status.child_state is ChildState.READY and status.child_pid != old_pid:
        print(f"refresh_worker: fresh worker process {status.child_pid} ready in "
              f"{time.monotonic() - t0:.2f}s (was {old_pid})", file=out, flush=True)
    else:
        print(f"refresh_worker: the fresh worker process did not start: "
              f"{status.failure or status.state.value}", file=out, flush=True)


def _fit(result: JobResult, settings: Settings) -> None:
    """A result over WORKER_MAX_RESULT_MB ends FAILED here too, as every other mode ends
    it: found before it is deployed."""
    limit = settings.max_result_mb
    try:
        size = stream_bound.nbytes(stream_bound.encode(result.body))
    except Exception:       # noqa: BLE001 - shown as it is; the child checked it is JSON
        return
    if limit and size > limit * 2**20:
        result.state = JobState.FAILED
        result.body = {"error": error_record("ResultTooLarge", stream_bound.too_large(
            size, limit), "", settings.worker_id, settings.hostname)}


def _show_result(result: JobResult, out: TextIO) -> bool:
    ok = result.state is JobState.COMPLETED
    print(f"--- job {result.job_id} {result.state.value} ({result.reason.value}) in "
          f"{result.execution_ms} ms ---", file=out)
    info = result.error_info()
    structured = isinstance(result.error, str) and info is not None and "error_type" in info
    shown = {k: v for k, v in result.body.items() if not (k == "error" and structured)}
    if shown:
        print(json.dumps(shown, indent=2, ensure_ascii=False), file=out)
    if info is not None:
        kind = info.get("error_type")
        print(f"error: {kind + ': ' if kind else ''}{info.get('error_message')}", file=out)
        tb = info.get("error_traceback")
        if tb and kind != "SetupFailed":   # the supervisor has logged a setup traceback
            print(tb.rstrip(), file=out)
    out.flush()
    return ok


def _compare(actual: Any, expected: Any, out: TextIO) -> bool:
    if actual == expected:
        print("test_output: matches", file=out, flush=True)
        return True
    print("test_output: MISMATCH", file=out)
    print(f"  expected: {json.dumps(expected, ensure_ascii=False)}", file=out)
    print(f"  got:      {json.dumps(actual, ensure_ascii=False)}", file=out, flush=True)
    return False
