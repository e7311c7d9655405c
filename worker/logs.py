"""Parent logging: readable lines, or JSON lines with the job id when running on RunPod
(RUNPOD_ENDPOINT_ID set), as runpod-python does: {"requestId", "message", "level"}.

Pass the job id as `extra={"job_id": ...}`; a job that came with a W3C traceparent has
its trace id in the line too (tracing.TRACES).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from .tracing import TRACES

MAX_MESSAGE = 4096
_SDK_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}     # RunPodLogger's level names


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    half = MAX_MESSAGE // 2
    return f"{text[:half]} …[{len(text) - MAX_MESSAGE} characters cut]… {text[-half:]}"


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s | %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        line = super().format(record)
        if job_id:
            head, _, rest = line.partition(" | ")
            trace = TRACES.get(job_id)
            line = f"{head} | {job_id}{f' trace={trace}' if trace else ''} | {rest}"
        return _clip(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        job_id = getattr(record, "job_id", None)
        line = {"requestId": job_id, "message": _clip(message),
                "level": _SDK_NAMES.get(record.levelname, record.levelname)}
        trace = TRACES.get(job_id) if job_id else None
        if trace:
            line["traceId"] = trace
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, json_lines: bool | None = None) -> None:
    """Set up the parent's logging once (stderr)."""
    if json_lines is None:
        json_lines = bool(os.environ.get("RUNPOD_ENDPOINT_ID"))
    name = {"WARN": "WARNING", "TRACE": "DEBUG", "NOTSET": "DEBUG"}.get(level.upper(),
                                                                         level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, name, logging.INFO))
