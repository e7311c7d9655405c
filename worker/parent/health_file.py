"""The worker's state in a file, for a health check that has no HTTP to ask (the Docker
HEALTHCHECK in queue and load-balancing mode). Written on every change of state, with
the parent's pid so a stale file from a dead worker reads as unhealthy."""
from __future__ import annotations

import json
import logging
import os
import time

from .. import healthcheck

log = logging.getLogger("worker")


class HealthFile:
    def __init__(self, settings):
        self.path = settings.health_file
        # where the local API listens, flags included: the health check asks there
        self.api = healthcheck.local_url(settings) if settings.serve_api else None
        self._last = None
        self._warned = False

    def update(self, status) -> None:
        key = (status.state, status.failure, status.ready, status.child_pid)
        if key == self._last:
            return
        self._last = key
        record = {"pid": os.getpid(), "state": status.state.value, "ready": status.ready,
                  "failure": status.failure, "child_pid": status.child_pid,
                  "time": time.time(), "api": self.api}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)         # a reader never sees half a file
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the health file %s: %s", self.path, exc)
