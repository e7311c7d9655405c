"""`python -m worker.healthcheck`: the Docker HEALTHCHECK.

Healthy (exit 0) means the worker can run jobs now (a child is ready); else exit 1 with
the reason. It asks what
the worker offers: the health file (WORKER_HEALTH_FILE, written in every mode; the images
set it) and, with the local API on, GET /health. Both must say so when both are there.
With neither there is nothing to ask: exit 0.
"""
from __future__ import annotations

import json
import os
import sys

import requests

from . import run_modes
from .config import Settings, SettingsError

# Running, but no child can take a job: a set-up, or a replacement, not finished yet. The
# image's start period covers the first set-up; past it, a set-up that hangs is unhealthy.
NOT_READY = "worker running, but no worker process can take jobs: its set-up has not finished"


def check(settings: Settings, timeout: float = 4.0) -> tuple[bool, str]:
    if not settings.health_file and not settings.serve_api:
        return True, "no health file and no local API: nothing to check"
    api = local_url(settings) if settings.serve_api else None
    if settings.health_file:
        ok, why, written = check_file(settings.health_file)
        api = written or api        # where the worker serves, its flags included
        if not ok or not api:
            return ok, why
    return check_api(api, timeout)


def local_url(settings: Settings) -> str:
    """The worker's local API as this machine reaches it."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def check_file(path: str) -> tuple[bool, str, str | None]:
    """(healthy, why, the local API's URL the worker wrote, if it serves one)."""
    try:
        with open(path) as f:
            record = json.load(f)
        pid, state = int(record["pid"]), record["state"]
        api = record.get("api") if isinstance(record.get("api"), str) else None
    except FileNotFoundError:
        return False, f"{path} is not written yet: the worker has not started", None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"{path} cannot be read: {exc}", None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"the worker (pid {pid}) that wrote {path} is not running", None
    except PermissionError:
        pass                          # alive, another user's
    if state == "running":
        return (True, "worker running", api) if record.get("ready") else (False, NOT_READY, api)
    return False, f"worker {state}: {record.get('failure')}", api


def check_api(base: str, timeout: float) -> tuple[bool, str]:
    url = f"{base}/health"
    session = requests.Session()
    session.trust_env = False      # loopback: never through a proxy from the environment
    try:
        health = session.get(url, timeout=timeout).json()     # a 503's body says why
    except (requests.RequestException, ValueError) as exc:
        return False, f"{url}: {_root(exc)}"
    if not isinstance(health, dict):
        return False, f"{url}: the answer is not a JSON object"
    worker = health.get("worker") or {}
    state = worker.get("state")
    if state == "running":
        ready = any(c.get("state") in ("ready", "busy") for c in worker.get("children") or ())
        return (True, "worker running") if ready else (False, NOT_READY)
    return False, f"worker {state}: {worker.get('failure')}"


def _root(exc: BaseException) -> BaseException:
    """The error under requests' wrappers (e.g. "[Errno 111] Connection refused")."""
    while (cause := exc.__cause__ or exc.__context__) is not None:
        exc = cause
    return exc


def main() -> int:
    try:
        settings, _ = run_modes.settle(Settings.load())   # WORKER_MODE=api: the API's on
    except SettingsError as exc:
        print(f"unhealthy: {exc}")
        return 1
    ok, why = check(settings)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
