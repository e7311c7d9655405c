"""Parent logging: readable lines, or JSON lines with the job id when running on RunPod
(RUNPOD_ENDPOINT_ID set), as runpod-python does: {"requestId", "message", "level"}.

Pass the job id as `extra={"job_id": ...}`; a job that came with a W3C traceparent has
its trace id in the line too (tracing.TRACES).

No remembered secret is ever in a line (redaction.scrub: the token, the queue's key, URL
and password). Much of what is logged comes from users (ids, URLs, error messages, the child's output),
so no text can pass for a line of the worker's own: in the readable form every control
character is shown escaped except colours (SGR sequences, which tqdm, rich and loguru
users expect to keep), and a record's second and later lines (a traceback, a message with
a newline) are indented, so none can start a line of its own. JSON lines escape every
control character, line and paragraph separators included.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys

from .redaction import scrub
from .tracing import TRACES

MAX_MESSAGE = 4096
_SDK_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}     # RunPodLogger's level names
_SGR = re.compile(r"(\x1b\[[0-9;:]{0,64}m)")     # a colour: kept in the readable form
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")   # not \t or \n
_JSON_RAW = re.compile(r"[\x7f-\x9f\u2028\u2029]")   # what json.dumps leaves raw


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character escaped but \\t, \\n and colours."""
    if not _CONTROL.search(text):
        return text
    parts = _SGR.split(text)
    parts[::2] = [_CONTROL.sub(_escape, p) for p in parts[::2]]
    return "".join(parts)


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
        return visible(_clip(scrub(line))).replace("\n", "\n    ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        job_id = getattr(record, "job_id", None)
        line = {"requestId": job_id, "message": _clip(scrub(message)),
                "level": _SDK_NAMES.get(record.levelname, record.levelname)}
        trace = TRACES.get(job_id) if job_id else None
        if trace:
            line["traceId"] = trace
        return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}",
                             json.dumps(line, ensure_ascii=False))


def configure(level: str, json_lines: bool | None = None) -> None:
    """Set up the parent's logging once (stderr)."""
    if json_lines is None:
        json_lines = bool(os.environ.get("RUNPOD_ENDPOINT_ID"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))


def level_number(level: str) -> int:
    """A log level's name as Settings takes it (WARN, TRACE...) as logging's number."""
    name = {"WARN": "WARNING", "TRACE": "DEBUG", "NOTSET": "DEBUG"}.get(level.upper(),
                                                                         level.upper())
    return getattr(logging, name, logging.INFO)
