"""Where an endpoint's jobs live in Redis, and the names both sides agree on.

Every key of an endpoint carries the hash tag {endpoint}, so on Redis Cluster they share
one slot and every script may touch them together.
"""
from __future__ import annotations

import re

GROUP = "workers"             # the consumer group of the job stream
HOOK_GROUP = "senders"        # the consumer group of the webhook outbox
RELEASED = "released"         # the consumer a stopping worker hands its entries to
ENDPOINT = re.compile(r"[A-Za-z0-9_\-]{1,64}")
DEAD_MAX = 10_000             # dead-letter entries kept (approximately)


class Keys:
    def __init__(self, endpoint: str, prefix: str = "gw"):
        if not ENDPOINT.fullmatch(endpoint or ""):
            raise ValueError(f"an endpoint name is 1-64 letters, digits, '-' or '_', "
                             f"not {endpoint!r}")
        self.endpoint = endpoint
        base = f"{prefix}:{{{endpoint}}}:"
        self.stream = base + "jobs"          # entries: id, job (its JSON, id included)
        self.dead = base + "dead"            # dead letters: id, job, error
        self.hooks = base + "hooks"          # the webhook outbox: id, url
        self.meta = base + "meta"            # handler: the file or module registered
        self.counts = base + "counts"        # final states, counted
        self.workers = base + "workers"      # zset: consumer -> last seen (ms)
        self._job = base + "job:"
        self._chunks = base + "chunks:"
        self._ended = base + "ended"
        self._idem = base + "idem:"

    def job(self, job_id: str) -> str:
        """The job's record (a hash): status, created, started, owner, final..."""
        return self._job + job_id

    def chunks(self, job_id: str) -> str:
        return self._chunks + job_id

    @property
    def ended(self) -> str:
        """The pub/sub channel a job's id is published on when it ends (fleet/endings.py)."""
        return self._ended

    def idem(self, key: str) -> str:
        return self._idem + key
