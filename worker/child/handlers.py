"""Handler kinds, and running one job of each kind into an Outcome (child side)."""
from __future__ import annotations

import asyncio
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..jobs import JobState, Reason, StreamCollector, normalise_return
from ..protocol import Kind


class Interrupted(BaseException):
    """Raised into a job the worker is stopping. A BaseException, so `except Exception`
    in user code does not swallow it."""


def detect_kind(handler: Any) -> Kind:
    """The kind, from the function (or a partial, method, or instance with __call__)."""
    if not callable(handler):
        raise TypeError(f"the handler must be callable, got {type(handler).__name__}")
    fn = handler
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn)
            or inspect.isclass(fn)):
        fn = getattr(type(fn), "__call__", fn)
    if inspect.isasyncgenfunction(fn):
        return Kind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(fn):
        return Kind.GENERATOR
    if inspect.iscoroutinefunction(fn):
        return Kind.ASYNC
    return Kind.SYNC


@dataclass
class Outcome:
    state: JobState
    reason: Reason
    body: dict
    refresh: bool = False


Emit = Callable[[Any], None]
Record = Callable[[BaseException], str]


def _returned(value: Any) -> Outcome:
    body, refresh = normalise_return(value)
    failed = "error" in body
    return Outcome(JobState.FAILED if failed else JobState.COMPLETED,
                   Reason.HANDLER_ERROR if failed else Reason.COMPLETED, body, refresh)


def _streamed(col: StreamCollector, error: Any = None) -> Outcome:
    body = col.body(error)
    failed = "error" in body
    return Outcome(JobState.FAILED if failed else JobState.COMPLETED,
                   Reason.HANDLER_ERROR if failed else Reason.COMPLETED, body, col.refresh)


def _raised(exc: BaseException, record: Record, col: StreamCollector | None) -> Outcome:
    # sys.exit(), KeyboardInterrupt or any other BaseException that is not an Exception
    # (GeneratorExit, a CancelledError a sync handler raised, a class of the user's): fail
    # that job only, then replace the child, since the code asked for its process (or
    # something in it) to end.
    leaving = not isinstance(exc, Exception)
    error = record(exc)
    if col is not None:
        out = _streamed(col, error)
        out.state, out.reason = JobState.FAILED, Reason.HANDLER_ERROR
        out.refresh = out.refresh or leaving
        return out
    return Outcome(JobState.FAILED, Reason.HANDLER_ERROR, {"error": error}, leaving)


def run_sync(handler: Callable, kind: Kind, job: dict, emit: Emit, aggregate: bool,
             record: Record) -> Outcome:
    """Run a sync or generator handler in the calling thread."""
    col = StreamCollector(aggregate) if kind is Kind.GENERATOR else None
    try:
        if col is None:
            value = handler(job)
            if inspect.isawaitable(value):
                close = getattr(value, "close", None)
                if close:
                    close()
                raise TypeError("the handler returned an awaitable from a plain function; "
                                "declare it `async def`")
            return _returned(value)
        for chunk in handler(job):
            chunk = col.accept(chunk)
            if chunk is StreamCollector.STOP:
                break
            emit(chunk)
        return _streamed(col)
    except Interrupted:
        raise
    except BaseException as exc:      # noqa: B902 - any of them is this job's failure
        return _raised(exc, record, col)


async def run_async(handler: Callable, kind: Kind, job: dict, emit: Emit, aggregate: bool,
                    record: Record) -> Outcome:
    """Run an async or async-generator handler as the current task."""
    col = StreamCollector(aggregate) if kind is Kind.ASYNC_GENERATOR else None
    try:
        if col is None:
            value = handler(job)
            if inspect.isawaitable(value):
                value = await value
            return _returned(value)
        async for chunk in handler(job):
            chunk = col.accept(chunk)
            if chunk is StreamCollector.STOP:
                break
            emit(chunk)
        return _streamed(col)
    except (Interrupted, asyncio.CancelledError):
        raise           # the task decides: a cancel it was asked for, or the handler's own
    except BaseException as exc:      # noqa: B902 - any of them is this job's failure
        return _raised(exc, record, col)
