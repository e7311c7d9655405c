"""A job's Redis record in the shapes clients see: /status and the webhook's body (the
cloud's shape, as the local API gives it)."""
from __future__ import annotations

import json


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def view(job_id: str, rec: dict) -> dict:
    """`rec`: the job hash as read (bytes keys and values)."""
    status = _text(rec.get(b"status", b""))
    out: dict = {"id": job_id, "status": status}
    created, started = rec.get(b"created"), rec.get(b"started")
    if created is not None and started is not None:
        out["delayTime"] = max(0, int(started) - int(created))
    final = rec.get(b"final")
    if final is not None:
        out.update(json.loads(final))
    elif status == "IN_PROGRESS" and rec.get(b"progress") is not None:
        out["output"] = json.loads(rec[b"progress"])
    owner = rec.get(b"owner")
    if owner:
        out["workerId"] = _text(owner).rsplit("#", 1)[0]
    return out


def final_body(body: dict, execution_ms: int) -> bytes:
    """What a worker stores as the final record: the result's body and its run's time."""
    return json.dumps({"executionTime": execution_ms, **body}, ensure_ascii=False,
                      allow_nan=False).encode()


def dumps(value) -> bytes:
    """A progress value or chunk as stored (the child checked it is JSON)."""
    return json.dumps(value, ensure_ascii=False).encode()
