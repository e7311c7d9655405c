"""RunPodLogger: the SDK's logger, written for this project. Same methods and the same
lines: JSON ({"requestId", "message", "level"}) when RUNPOD_ENDPOINT_ID is set, else
`LEVEL  | job | message`. In a gpu-worker child the parent reads either form back and
logs the line at its level (parent/output.py)."""
from __future__ import annotations

import json
import os

LOG_LEVELS = ["NOTSET", "TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
MAX_MESSAGE_LENGTH = 4096


def _level(value) -> str:
    if isinstance(value, str) and value.upper() in LOG_LEVELS:
        return value.upper()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LOG_LEVELS):
        return LOG_LEVELS[value]
    raise ValueError(f"Invalid debug level: {value}")


def _env_level() -> str:
    """The SDK's level variables, read at import: an empty one is unset, and a value the
    SDK would raise on (WARNING, CRITICAL, a typo) does not stop the process from importing
    — the worker's own settings say what is wrong with its log level."""
    for name in ("RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            value = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(value, value)
            return value if value in LOG_LEVELS else "DEBUG"
    return "DEBUG"


class RunPodLogger:
    """One logger per process (the SDK's is a singleton too)."""

    _instance = None
    level = _env_level()

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def set_level(self, new_level) -> None:
        self.level = _level(new_level)
        self.info(f"Log level set to {self.level}")

    def log(self, message, message_level: str = "INFO", job_id=None) -> None:
        if self.level == "NOTSET":
            return
        if message_level != "TIP" and \
                LOG_LEVELS.index(self.level) > LOG_LEVELS.index(message_level):
            return
        message = str(message)
        if len(message) > MAX_MESSAGE_LENGTH:
            half = MAX_MESSAGE_LENGTH // 2
            cut = len(message) - MAX_MESSAGE_LENGTH
            message = f"{message[:half]}\n...TRUNCATED {cut} CHARACTERS...\n{message[-half:]}"
        if os.environ.get("RUNPOD_ENDPOINT_ID"):
            print(json.dumps({"requestId": job_id, "message": message,
                              "level": message_level}), flush=True)
            return
        if job_id:
            message = f"{job_id} | {message}"
        print(f"{message_level.ljust(7)}| {message}", flush=True)

    def secret(self, secret_name, secret) -> None:
        secret = str(secret)
        self.info(f"{secret_name}: {secret[0]}{'*' * (len(secret) - 2)}{secret[-1]}")

    def debug(self, message, request_id=None):
        self.log(message, "DEBUG", request_id)

    def info(self, message, request_id=None):
        self.log(message, "INFO", request_id)

    def warn(self, message, request_id=None):
        self.log(message, "WARN", request_id)

    def error(self, message, request_id=None):
        self.log(message, "ERROR", request_id)

    def tip(self, message):
        self.log(message, "TIP")

    def trace(self, message, request_id=None):
        self.log(message, "TRACE", request_id)
