"""`python -m worker.healthcheck`: the Docker HEALTHCHECK.

With the local API on (WORKER_SERVE_API=true), healthy means /health answers and the
worker can run jobs (exit 0), else exit 1. Without it (on RunPod the platform watches the
heartbeat) there is nothing to ask here: exit 0.
"""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from .config import Settings, SettingsError


def check(settings: Settings, timeout: float = 4.0) -> tuple[bool, str]:
    if not settings.serve_api:
        return True, "local API off: nothing to check"
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
        return True, "worker running"
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
