"""Jobs, their final states, and result normalisation as runpod-python 1.12 does it.

Pure functions and plain data: imported by the parent and by the child.
"""
from __future__ import annotations

import json
import re
import socket
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import tracing
from .version import RUNPOD_PROTOCOL_VERSION, __version__


class JobState(str, Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def final(self) -> bool:
        return self not in (JobState.IN_QUEUE, JobState.IN_PROGRESS)


class Reason(str, Enum):
    """How a job ended; finer than the state (both FAILED: a handler error vs. a lost child)."""
    COMPLETED = "completed"
    HANDLER_ERROR = "handler_error"
    WORKER_LOST = "worker_lost"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REFUSED = "refused"


class JobError(ValueError):
    """A job that cannot be accepted (bad shape); the message says why."""


COLD = "cold"     # refresh_worker: "cold": the next child starts after this job, cold
SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,200}")   # ids go into URLs and log lines


def validate_job(job: Any, default_id: str | None = None) -> dict:
    """Check the shape every source must deliver: an object with an id and an input."""
    if not isinstance(job, dict):
        raise JobError(f"a job must be a JSON object, got {type(job).__name__}")
    if "input" not in job:
        raise JobError("the job has no 'input' key")
    if "id" not in job:
        if default_id is None:
            raise JobError("the job has no 'id' key")
        job = {**job, "id": default_id}
    if not isinstance(job["id"], str) or not job["id"]:
        raise JobError("the job 'id' must be a non-empty string")
    if not SAFE_ID.fullmatch(job["id"]):
        raise JobError("the job 'id' must be 1-200 characters of letters, digits and "
                       "._:- (it goes into URLs and log lines)")
    if "traceparent" in job and tracing.valid(job["traceparent"]) is None:
        job = {k: v for k, v in job.items() if k != "traceparent"}    # ignored (W3C)
    policy = job.get("policy")
    if policy is not None:
        if not isinstance(policy, dict):
            raise JobError("the job 'policy' must be an object")
        ms = policy.get("executionTimeout")
        if ms is not None and not (isinstance(ms, (int, float)) and not isinstance(ms, bool)
                                   and 0 <= ms <= MAX_TIMEOUT_MS):
            raise JobError("policy.executionTimeout must be a number of milliseconds from 0 "
                           f"(the worker's default) to {MAX_TIMEOUT_MS} (30 days), "
                           f"not {_short(ms)}")
        ttl = policy.get("ttl")
        if ttl is not None and not (isinstance(ttl, (int, float)) and not isinstance(ttl, bool)
                                    and 0 < ttl <= MAX_TIMEOUT_MS):
            raise JobError("policy.ttl must be a number of milliseconds above 0 and up to "
                           f"{MAX_TIMEOUT_MS} (30 days), not {_short(ttl)}")
    return job


MAX_TIMEOUT_MS = 30 * 24 * 3600 * 1000


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def execution_timeout(job: dict, default_s: float) -> float:
    """Seconds the job may run: policy.executionTimeout (ms, checked by validate_job) if
    given and not 0, else the default."""
    policy = job.get("policy")
    if isinstance(policy, dict):
        ms = policy.get("executionTimeout")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and \
                0 < ms <= MAX_TIMEOUT_MS:
            return ms / 1000.0
    return default_s


def ttl(job: dict) -> float | None:
    """Seconds the job may live, queued and running, from the moment it was queued:
    policy.ttl (ms, checked by validate_job), RunPod's meaning; None without one."""
    policy = job.get("policy")
    ms = policy.get("ttl") if isinstance(policy, dict) else None
    if isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 < ms <= MAX_TIMEOUT_MS:
        return ms / 1000.0
    return None


@dataclass
class JobResult:
    """The one final record of a job. `body` is the SDK's job-done body shape."""
    job_id: str
    state: JobState
    reason: Reason
    body: dict
    refresh: bool | str = False     # "cold": the next child starts after this job

    delay_ms: int = 0
    execution_ms: int = 0
    setup_wait_ms: int = 0     # of the delay, the time no child was ready (a start, a refresh)
    ran: bool = False          # it started in a child: the times above are its own
    trace: str | None = None   # the job's W3C traceparent, when it came with one
    extra: dict = field(default_factory=dict)

    @property
    def refresh_cold(self) -> bool:
        """The handler asked for a cold refresh (`refresh_worker: "cold"`)."""
        return self.refresh == COLD

    def times(self) -> dict:
        """The time breakdown every final record carries, in RunPod's names (ms)."""
        if not self.ran:
            return {}
        return {"delayTime": self.delay_ms, "executionTime": self.execution_ms,
                "setupWaitTime": self.setup_wait_ms}

    def times_text(self) -> str:
        if not self.ran:
            return ""
        return (f" in {self.execution_ms} ms (queued {self.delay_ms} ms"
                + (f", {self.setup_wait_ms} ms of it waiting for a child's setup"
                   if self.setup_wait_ms else "") + ")")

    @property
    def output(self) -> Any:
        return self.body.get("output")

    @property
    def error(self) -> Any:
        return self.body.get("error")

    def error_info(self) -> dict | None:
        """The error as a dict: the structured record when it is one, else {'error_message'}."""
        err = self.error
        if err is None:
            return None
        if isinstance(err, str):
            try:
                parsed = json.loads(err)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "error_message" in parsed:
                return parsed
        return {"error_message": err if isinstance(err, str) else json.dumps(err)}


def normalise_return(value: Any) -> tuple[dict, bool]:
    """SDK §2.3: pop `error` and `refresh_worker` from a dict; `{}` leaves no output key.

    Returns (body, refresh). Like the SDK, the caller's dict is mutated.
    """
    refresh = False
    body: dict = {}
    if isinstance(value, dict):
        error = value.pop("error", None)
        refresh = value.pop("refresh_worker", None)
        # "cold": the next child must start after this job (it wrote what it loads), so
        # a spare set up before is dropped. Anything else counts as the SDK reads it.
        refresh = COLD if refresh == COLD else bool(refresh)
        if value:
            body["output"] = value
        if error:
            body["error"] = error
    else:
        body["output"] = value
    return body, refresh


def exception_record(exc: BaseException, worker_id: str = "", hostname: str = "") -> str:
    """SDK §2.3: the error record, as a JSON string (the wire carries a string)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return error_record(str(type(exc)), str(exc), tb, worker_id, hostname)


def error_record(error_type: str, message: str, tb: str = "", worker_id: str = "",
                 hostname: str = "") -> str:
    return json.dumps({
        "error_type": error_type,
        "error_message": message,
        "error_traceback": tb,
        "hostname": hostname or socket.gethostname() or "unknown",
        "worker_id": worker_id or "unknown",
        "runpod_version": RUNPOD_PROTOCOL_VERSION,      # as the SDK's record: its protocol
        "worker_version": f"gpu-worker {__version__}",
    })


def failure(job_id: str, state: JobState, reason: Reason, error_type: str, message: str,
            worker_id: str = "", hostname: str = "", details: str = "") -> JobResult:
    """A final record for an ending the worker decided (timeout, lost child, refusal...)."""
    body = {"error": error_record(error_type, message, details, worker_id, hostname)}
    return JobResult(job_id, state, reason, body)


class StreamCollector:
    """Turns a generator's chunks into stream events and a final body (SDK §2.4).

    A dict chunk with a truthy `error` ends the stream without being sent; unlike the SDK,
    a chunk's `refresh_worker` is honoured, and chunks already sent are kept when the
    generator fails midway.
    """

    def __init__(self, aggregate: bool):
        self.aggregate = aggregate
        self.chunks: list = []
        self.refresh = False
        self.error: Any = None

    STOP = object()

    def accept(self, chunk: Any) -> Any:
        """The chunk to send on, or STOP: the stream ends here with an error."""
        if isinstance(chunk, dict):
            if "refresh_worker" in chunk:
                self.refresh = self.refresh or bool(chunk["refresh_worker"])
                chunk = {k: v for k, v in chunk.items() if k != "refresh_worker"}
            if chunk.get("error"):
                self.error = str(chunk["error"])
                return self.STOP
        if self.aggregate:
            self.chunks.append(chunk)
        return chunk

    def body(self, error: Any = None) -> dict:
        if error is None and self.error is not None:
            return {"error": self.error}     # an error chunk: the SDK posts the error alone
        body: dict = {"output": self.chunks if self.aggregate else []}
        if error is not None:
            body["error"] = error
        return body
