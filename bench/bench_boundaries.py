"""What a user sees at the edges, through the stand-in queue and the local API (real
worker processes, tests/handlers/edges.py):

- SIGTERM to an idle worker whose job take is long-polling (60 s), grace 30 s: seconds to exit;
- a heartbeat interval of 0.5 s while a 3 s job drains after SIGTERM: pings sent;
- a job whose result posts fail 4 times (500) and a job that ends 0.2 s after it: when each
  result reached the queue, after the first job was taken;
- a handler that sends 10,000 progress updates: progress posts, and seconds from the take
  to the result;
- the local API with 40 queued jobs of 5 MB: the server process's RSS before and after.

    .venv/bin/python bench/bench_boundaries.py
    PYTHONPATH=<checkout of an older commit> .venv/bin/python bench/bench_boundaries.py

Prints figures; asserts nothing.
"""
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

import loopback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_runpod import FakeRunPod  # noqa: E402
from tests.support import Server, Worker  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="bench-boundaries-"))


def idle_sigterm() -> None:
    with FakeRunPod(long_poll=60) as q:
        w = Worker(q, "edges.py", TMP, WORKER_SHUTDOWN_GRACE="30")
        q.wait_for(lambda f: f.counts["take"] > 0 and len(f.pings) > 0, 60)
        time.sleep(0.5)
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        code = w.proc.wait(120)
        print(f"idle worker, take long-polling: exit {code} {time.monotonic() - t0:.2f} s "
              "after SIGTERM (grace 30 s)")


def drain_pings() -> None:
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "edges.py", TMP, RUNPOD_PING_INTERVAL="500", WORKER_SHUTDOWN_GRACE="30")
        q.add_jobs([{"id": "long", "input": {"do": "sleep", "seconds": 3.0}}])
        q.wait_for(lambda f: any("long" in str(p) for p in f.pings), 60)
        before = len(q.pings)
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(120)
        took = time.monotonic() - t0
        print(f"drain of a 3 s job, ping interval 0.5 s: {len(q.pings) - before} pings in "
              f"{took:.1f} s")


def delivery() -> None:
    with FakeRunPod(long_poll=0.3) as q:
        q.fail_results("stubborn", 4)
        w = Worker(q, "conc_sync.py", TMP)
        q.add_jobs([{"id": "stubborn", "input": {"delay": 0.2}},
                    {"id": "quick", "input": {"delay": 0.4}}])
        t0 = time.monotonic()
        q.wait_final(["stubborn", "quick"], 120)
        print(f"result posts: 'stubborn' (ends at ~0.2 s, 4 failed posts) delivered at "
              f"{q.done_at['stubborn'] - t0:.2f} s; 'quick' (ends at ~0.4 s) at "
              f"{q.done_at['quick'] - t0:.2f} s")
        w.stop()


def progress_flood() -> None:
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "edges.py", TMP)
        q.add_jobs([{"id": "warm", "input": {"do": "echo"}}])
        q.wait_final(["warm"], 60)
        t0 = time.monotonic()
        q.add_jobs([{"id": "chatty", "input": {"do": "progress", "n": 10_000}}])
        q.wait_final(["chatty"], 300)
        print(f"10,000 progress updates: {len(q.progress['chatty'])} progress posts; result "
              f"{q.done_at['chatty'] - t0:.2f} s after it was queued")
        w.stop()


def queued_memory() -> None:
    s = Server("edges.py", TMP)
    try:
        proc = psutil.Process(s.proc.pid)
        session = requests.Session()
        session.post(f"{s.url}/runsync", json={"input": {"do": "echo"}}, timeout=60)
        before = proc.memory_info().rss
        first = session.post(f"{s.url}/run", json={"input": {"do": "sleep", "seconds": 60}},
                             timeout=60).json()["id"]
        big = {"input": {"do": "echo", "echo": "x" * (5 * 2**20)}}
        codes = [session.post(f"{s.url}/run", json=big, timeout=60).status_code
                 for _ in range(40)]
        after = proc.memory_info().rss
        print(f"local API, 40 queued jobs of 5 MB (answers {sorted(set(codes))}): server RSS "
              f"{before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB")
        session.post(f"{s.url}/cancel/{first}", timeout=60)
    finally:
        s.close()


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        print(f"worker from: {os.environ.get('PYTHONPATH') or ROOT}")
        for case in (idle_sigterm, drain_pings, delivery, progress_flood, queued_memory):
            try:
                case()
            except Exception as exc:     # an older commit may not survive a case: say so
                print(f"{case.__name__}: failed: {type(exc).__name__}: {exc}")
