"""What a soak run does, drawn from its seed before anything starts: the jobs (their kind,
when each is sent, how, and whether it is cancelled) and the faults (which, when). The
same seed gives the same plan; the interleaving with the processes' own timing is not
repeatable, so a failure prints the whole history it saw."""
from __future__ import annotations

import random
from dataclasses import dataclass

# kind -> weight: what the handler does (soak/handler.py)
KINDS = {"ok": 68, "stream": 10, "fail": 8, "refresh": 5, "timeout": 3, "crash": 4,
         "slow": 2}
TIMEOUT_MS = 300              # a timeout job's policy.executionTimeout
CANCEL_SHARE = 0.05           # jobs cancelled a moment after they are sent
RUNSYNC_SHARE = 0.15          # jobs sent with /runsync (the rest /run)

# The state each kind ends in when nothing else happens to it.
EXPECTED = {"ok": "COMPLETED", "stream": "COMPLETED", "refresh": "COMPLETED",
            "slow": "COMPLETED", "fail": "FAILED", "crash": "FAILED",
            "timeout": "TIMED_OUT"}


@dataclass(frozen=True)
class PlannedJob:
    token: str
    kind: str
    at: float                  # seconds after the start when it is sent
    ms: int                    # how long the handler works before it acts
    via: str                   # "run" or "runsync"
    cancel_after: float | None  # seconds after it is sent; None: never

    def body(self, webhook: str | None = None) -> dict:
        body = {"input": {"token": self.token, "kind": self.kind, "ms": self.ms}}
        if self.kind == "timeout":
            body["policy"] = {"executionTimeout": TIMEOUT_MS}
        if webhook:
            body["webhook"] = webhook
        return body


def expected_output(kind: str, token: str) -> list:
    """A COMPLETED job's output: its chunks, aggregated (refresh_worker taken out)."""
    if kind == "stream":
        return [{"token": token, "i": i} for i in range(3)]
    return [{"token": token}]


def jobs(rng: random.Random, mode: str, seconds: float, rate: float) -> list:
    kinds, weights = zip(*KINDS.items())
    out = []
    for n in range(int(seconds * rate)):
        kind = rng.choices(kinds, weights)[0]
        ms = rng.randint(400, 900) if kind == "slow" else rng.randint(0, 15)
        via = "runsync" if rng.random() < RUNSYNC_SHARE else "run"
        # a /runsync client learns its id only at the end: only /run jobs are cancelled
        cancel = (rng.uniform(0, 0.5) if via == "run" and rng.random() < CANCEL_SHARE
                  else None)
        out.append(PlannedJob(f"{mode}-{n}", kind, n / rate, ms, via, cancel))
    return out


def faults(rng: random.Random, seconds: float, kinds: tuple, gap: tuple) -> list:
    """(seconds after the start, kind): every kind once per round, in a random order,
    random gaps between them; in a short run the gaps shrink so one round fits."""
    hi = min(gap[1], seconds / (len(kinds) + 1))
    gap = (min(gap[0], hi / 2), hi)
    out, t = [], rng.uniform(*gap)
    while t < seconds:
        for kind in rng.sample(kinds, len(kinds)):
            if t >= seconds:
                break
            out.append((t, kind))
            t += rng.uniform(*gap)
    return out
