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
import urllib.error
import urllib.request

from .config import Settings, SettingsError

# Running, but no child can take a job: a set-up, or a replacement, not finished yet. The
# image's start period covers the first set-up; past it, a set-up that hangs is unhealthy.
NOT_READY = "worker running, but no worker process can take jobs: its set-up has not finished"


def check(settings: Settings, timeout: float = 4.0) -> tuple[bool, str]:
    if not settings.health_file and not settings.serve_api:
        return True, "no health file and no local API: nothing to check"
    if settings.health_file:
        ok, why = check_file(settings.health_file)
        if not ok or not settings.serve_api:
            return ok, why
    return check_api(settings, timeout)


def check_file(path: str) -> tuple[bool, str]:
    try:
        with open(path) as f:
            record = json.load(f)
        pid, state = int(record["pid"]), record["state"]
    except FileNotFoundError:
        return False, f"{path} is not written yet: the worker has not started"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"{path} cannot be read: {exc}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"the worker (pid {pid}) that wrote {path} is not running"
    except PermissionError:
        pass                          # alive, another user's
    if state == "running":
        return (True, "worker running") if record.get("ready") else (False, NOT_READY)
    return False, f"worker {state}: {record.get('failure')}"


def check_api(settings: Settings, timeout: float) -> tuple[bool, str]:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    url = f"http://{host}:{settings.api_port}/health"
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                health = json.load(resp)
        except urllib.error.HTTPError as exc:    # 503: the body still says why
            health = json.load(exc)
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    worker = health.get("worker") or {}
    state = worker.get("state")
    if state == "running":
        ready = any(c.get("state") in ("ready", "busy") for c in worker.get("children") or ())
        return (True, "worker running") if ready else (False, NOT_READY)
    return False, f"worker {state}: {worker.get('failure')}"


def main() -> int:
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"unhealthy: {exc}")
        return 1
    ok, why = check(settings)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
