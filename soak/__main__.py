"""python -m soak [--seed N] [--seconds S] [--rate R] [--modes local,runpod,redis]

Prints, per mode: jobs submitted, faults injected by kind, jobs lost, final reports per
job, runs per job, the steady processes' memory and descriptors before and after, and
p50/p99 from sending a job to its final report. Exits 1 when a bound is broken, printing
the seed and each broken job's whole history (its events, the faults around it, and the
processes' log lines that name it)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import loopback  # noqa: E402  (bench/loopback.py: nothing here leaves loopback)

from . import mode as driver  # noqa: E402
from .fleet_mode import FleetMode  # noqa: E402
from tests.fleet_support import REDIS  # noqa: E402
from .local_mode import LocalMode  # noqa: E402
from .runpod_mode import RunPodMode  # noqa: E402

MODES = {"local": LocalMode, "runpod": RunPodMode, "redis": FleetMode}

SHOWN = 10         # broken jobs whose history is printed in full


def _counts(counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=str)) or "none"


def _mem(before, after) -> str:
    out = []
    for name in before:
        b, a = before[name], after.get(name)
        if b is None or a is None:
            out.append(f"{name}: gone")
            continue
        out.append(f"{name} RSS {b['rss_mb']:.1f} -> {a['rss_mb']:.1f} MB, "
                   f"descriptors {b['fds']} -> {a['fds']}")
    return "; ".join(out)


def report(mode_cls, ledger, before, after, violations, logs, figures) -> bool:
    s = ledger.summary()
    p = (f"p50 {s['p50']:.0f} ms, p99 {s['p99']:.0f} ms" if s["p50"] is not None
         else "no latency")
    fsync = getattr(mode_cls, "fsync", None)
    aof = f" (Redis: appendfsync {fsync})" if fsync and fsync != "off" else (
        " (Redis: no append-only file)" if fsync else "")
    print(f"\n== {mode_cls.name}: {mode_cls.contract}{aof}", flush=True)
    refused = sum(s["refused"].values())
    print(f"  jobs: planned {s['planned']}, submitted {s['submitted']}, refused to the "
          f"client {refused}; final states: {_counts(s['states'])}")
    if refused:
        print(f"  refused: {_counts(s['refused'])}")
        for e in [e for e in ledger.jobs.values() if e.refused][:3]:
            print(ledger.history(e.job.token, logs))
    skipped = f"; not made: {_counts(s['skipped'])}" if s["skipped"] else ""
    print(f"  faults injected: {_counts(s['faults'])} ({sum(s['faults'].values())}){skipped}")
    print(f"  lost: {s['lost']}; final reports ({mode_cls.counted}) per job: "
          f"{_counts(s['finals'])}; runs per job: {_counts(s['runs'])} "
          f"(bound {mode_cls.run_bound})")
    for line in figures:
        print(f"  {line}")
    print(f"  steady processes: {_mem(before, after)}")
    print(f"  latency, send to final report: {p}")
    if not violations:
        print("  bounds: all held")
        return True
    print(f"  BOUNDS BROKEN: {len(violations)} (seed {ledger.seed})")
    tokens = []
    for token, what in violations:
        if token is None:
            print(f"  - {what}")
        elif token not in tokens:
            tokens.append(token)
    for token in tokens[:SHOWN]:
        print(f"  - {token}: " + "; ".join(w for t, w in violations if t == token))
        print(ledger.history(token, logs))
    if len(tokens) > SHOWN:
        print(f"  ... and {len(tokens) - SHOWN} more jobs")
    return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--seconds", type=float, default=60.0,
                   help="how long each mode sends jobs (faults stop with the last)")
    p.add_argument("--rate", type=float, default=40.0, help="jobs sent per second")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--redis-fsync", choices=("always", "everysec", "off"), default="always",
                   help="the Redis mode's appendfsync; off: no append-only file (a Redis "
                        "killed comes back empty: the soak must find jobs lost)")
    p.add_argument("--folder", default=None, help="where logs go (default: a temporary one)")
    args = p.parse_args(argv)
    FleetMode.fsync = args.redis_fsync
    folder = Path(args.folder or tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: seed {args.seed}, {args.seconds:g} s per mode at {args.rate:g} jobs/s, "
          f"{os.cpu_count()} CPUs; logs in {folder}", flush=True)
    print(f"  again: python -m soak --seed {args.seed} --seconds {args.seconds:g} "
          f"--rate {args.rate:g} --modes {args.modes} --redis-fsync {args.redis_fsync}")
    ok = True
    for name in args.modes.split(","):
        cls = MODES[name]
        if cls is FleetMode and REDIS is None:
            print("\n== redis: SKIPPED, no redis-server on this machine (`make redis` installs "
                  "it)", flush=True)
            ok = False
            continue
        t = time.monotonic()
        result = driver.run(cls, args.seed, args.seconds, args.rate, folder)
        ok = report(cls, *result) and ok
        print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
    print(f"\nsoak: {'every bound held' if ok else 'BOUNDS BROKEN'} (seed {args.seed})")
    return 0 if ok else 1


if __name__ == "__main__":
    with loopback.only():
        code = main()
    sys.exit(code)
