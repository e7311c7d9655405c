"""Core benchmarks: trivial jobs per second through parent and child, and the time from a
refresh to the next job starting (torch handler, with and without WORKER_PRELOAD=torch).

    make bench            # or: .venv/bin/python bench/bench_core.py [--jobs N]

Prints figures; asserts nothing. Record them in docs/benchmarks.md with the machine.
"""
import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import loopback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from worker.targets import ScriptTarget          # noqa: E402
from worker.config import Settings             # noqa: E402
from worker.parent.supervisor import JobListener, Supervisor  # noqa: E402


class Counter(JobListener):
    def __init__(self, n):
        self.n = n
        self.done = 0
        self.failed = 0
        self.starts = {}
        self.ends = {}
        self.event = threading.Event()

    def on_start(self, job_id):
        self.starts[job_id] = time.perf_counter()

    def on_result(self, result):
        self.ends[result.job_id] = time.perf_counter()
        self.done += 1
        self.failed += result.state.value != "COMPLETED"
        if self.done >= self.n:
            self.event.set()


def supervisor(handler, **settings):
    sup = Supervisor(Settings(**settings), ScriptTarget(str(HERE / "handlers" / handler))).start()
    if not sup.wait_ready(120):
        raise SystemExit(f"{handler}: child did not start: {sup.failure_message}")
    return sup


def jobs_per_second(handler, n):
    sup = supervisor(handler)
    warm = Counter(200)
    for i in range(200):
        sup.submit({"id": f"w{i}", "input": {"i": i}}, warm)
    warm.event.wait(60)
    c = Counter(n)
    t0 = time.perf_counter()
    for i in range(n):
        sup.submit({"id": f"j{i}", "input": {"i": i}}, c)
    c.event.wait(300)
    elapsed = time.perf_counter() - t0
    sup.stop()
    sup.join(30)
    assert c.failed == 0, f"{c.failed} jobs failed"
    return n / elapsed


def pipe_baseline(n):
    """A bare pipe round trip of a small pickled dict, for scale."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,), daemon=True)
    p.start()
    msg = {"id": "j", "input": {"i": 1}}
    a.send(msg)
    a.recv()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send(msg)
        a.recv()
    rate = n / (time.perf_counter() - t0)
    a.send(None)
    p.join(5)
    return rate


def _echo(conn):
    while True:
        m = conn.recv()
        if m is None:
            return
        conn.send(m)


def refresh_to_next_job(rounds, **settings):
    sup = supervisor("torch_refresh.py", **settings)
    gaps = []
    for r in range(rounds):
        c = Counter(2)
        sup.submit({"id": f"r{r}", "input": {"refresh": True}}, c)
        sup.submit({"id": f"n{r}", "input": {}}, c)
        c.event.wait(120)
        assert c.failed == 0
        gaps.append(c.starts[f"n{r}"] - c.ends[f"r{r}"])
    sup.stop()
    sup.join(30)
    return gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()}")
    print(f"bare pipe round trip (pickled dict, spawn child): {pipe_baseline(args.jobs):,.0f}/s")
    for handler in ("trivial.py", "trivial_async.py"):
        rate = jobs_per_second(handler, args.jobs)
        print(f"trivial jobs through parent and child ({handler}, {args.jobs} jobs): "
              f"{rate:,.0f} jobs/s")
    import importlib.util
    if importlib.util.find_spec("torch") is None:   # never imported here: the parent stays torch-free
        print("torch is not installed: skipping the refresh benchmark (make bench installs it)")
        return
    cases = [("forkserver, WORKER_PRELOAD=torch", dict(preload=("torch",))),
             ("forkserver, no preload", dict()),
             ("spawn, no preload", dict(start_method="spawn"))]
    for label, settings in cases:
        gaps = refresh_to_next_job(args.rounds, **settings)
        print(f"refresh-to-next-job, torch handler, {label}: median "
              f"{statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms "
              f"({args.rounds} rounds)")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
