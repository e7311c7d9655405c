"""A job's Redis record in the shapes clients see: /status and the webhook's body (the
cloud's shape, as the local API gives it)."""
from __future__ import annotations

import json
import logging

from .. import stream_bound
from ..jobs import JobState, error_record

log = logging.getLogger("worker.queue")


def text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def view(job_id: str, rec: dict) -> dict:
    """`rec`: the job hash as read (bytes keys and values)."""
    status = text(rec.get(b"status", b""))
    out: dict = {"id": job_id, "status": status}
    created, started = rec.get(b"created"), rec.get(b"started")
    if created is not None and started is not None:
        out["delayTime"] = max(0, int(started) - int(created))
    final = rec.get(b"final")
    if final is not None:
        out.update(json.loads(final))
    elif status == "IN_PROGRESS" and rec.get(b"progress") is not None:
        out["output"] = json.loads(rec[b"progress"])
    if rec.get(b"dropped"):
        out["streamDropped"] = int(rec[b"dropped"])
    owner = rec.get(b"owner")
    if owner:
        out["workerId"] = text(owner).rsplit("#", 1)[0]
    return out


def final_body(body: dict, execution_ms: int) -> bytes:
    """What a worker stores as the final record: the result's body and its run's time.
    NaN and Infinity are written as runpod-python's json.dumps writes them (docs/
    compatibility.md), as in every other mode."""
    return json.dumps({"executionTime": execution_ms, **body}, ensure_ascii=False).encode()


def dumps(value) -> bytes:
    """A progress value or chunk as stored (the child checked it is JSON)."""
    return json.dumps(value, ensure_ascii=False).encode()


def fitted(result, limit_mb: float, worker_id: str, hostname: str) -> bytes:
    """The final record's JSON for a JobResult; over `limit_mb` (WORKER_MAX_RESULT_MB), or
    not encodable, a FAILED error record instead (the result's state follows): never
    lost."""
    try:
        data = final_body(result.body, result.execution_ms)
    except Exception as exc:       # noqa: BLE001 - the child checked it; never lose it
        return _error(result, "ResultUnencodable", f"the job's result could not be "
                      f"encoded: {type(exc).__name__}: {exc}"[:1000], worker_id, hostname)
    if limit_mb and len(data) > limit_mb * 2**20:
        return _error(result, "ResultTooLarge", stream_bound.too_large(len(data), limit_mb),
                      worker_id, hostname)
    return data


def _error(result, kind: str, text: str, worker_id: str, hostname: str) -> bytes:
    result.state = JobState.FAILED
    log.error(text, extra={"job_id": result.job_id})
    return final_body({"error": error_record(kind, text, "", worker_id, hostname)},
                      result.execution_ms)
