"""A thousand clients waiting in /runsync on one gateway: the Redis connections the
gateway uses, /health while they wait, and how soon each waiter hears of its job's end.

    .venv/bin/python bench/bench_waiters.py [--waiters 1000]     # also run by make bench-fleet

The waiters' jobs are queued before any worker runs (every client is waiting at once);
then three workers with a trivial handler drain them. Figures: the gateway's connections
to Redis (its sockets to the server's port, sampled every 20 ms, the peak), /health's
latency while all wait, every job answered COMPLETED (any other answer is counted and
printed), and the wake-up: from a job's final record (the server's clock) to its client
holding the answer (the same machine's clock), p50 and p99.
"""
import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

import loopback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.fleet_support import REDIS, Gateway, Proc, RedisServer, fleet_env  # noqa: E402
from tests.support import PYTHON  # noqa: E402
from worker.fleet.keys import Keys  # noqa: E402

QUIET = {"WORKER_LOG_LEVEL": "WARN", "RUNPOD_LOG_LEVEL": "WARN"}


def connections(pid: int, port: int) -> int:
    try:
        return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port)
    except psutil.Error:
        return 0


async def wait_all(port: int, n: int) -> list:
    """n clients, each on its own connection, each POSTing /runsync and reading the answer
    to its end (HTTP/1.1 by hand: a client library's pool costs more per answer than the
    gateway does, at a thousand connections)."""
    async def one(i):
        body = json.dumps({"input": {"i": i}}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /runsync?wait=300000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        raw = await reader.read()
        at = time.time()
        writer.close()
        head, _, data = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(data), at
    return await asyncio.gather(*(one(i) for i in range(n)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--waiters", type=int, default=1000)
    args = p.parse_args()
    if REDIS is None:
        raise SystemExit("no redis-server: `make redis` installs it")
    n, folder = args.waiters, Path(tempfile.mkdtemp(prefix="bench-waiters-"))
    srv = RedisServer(folder / "redis")
    gw = Gateway(srv, "waiters", folder, **QUIET)
    workers, peak, done = [], [0], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], connections(gw.proc.pid, srv.port))
    threading.Thread(target=sample, daemon=True).start()
    answers: list = []
    runner = threading.Thread(target=lambda: answers.extend(asyncio.run(wait_all(gw.port, n))))
    try:
        runner.start()
        r, deadline = srv.client(), time.monotonic() + 120
        while r.xlen(Keys("waiters").stream) < n and runner.is_alive():
            assert time.monotonic() < deadline, "the waiters' jobs were not all queued"
            time.sleep(0.05)
        health = []
        for _ in range(20):
            t0 = time.perf_counter()
            code = httpx.get(gw.url + "/health", timeout=30).status_code
            health.append(((time.perf_counter() - t0) * 1000, code))
        workers = [Proc([PYTHON, "-m", "worker", str(HERE / "handlers" / "trivial.py")],
                        fleet_env(srv, "waiters", **QUIET), folder / f"w{i}.log", cwd=folder)
                   for i in range(3)]
        runner.join(600)
        done.set()
        ok = [(a, t) for code, a, t in answers if code == 200 and a.get("status") == "COMPLETED"]
        bad = [a for code, a, _ in answers if code != 200 or a.get("status") != "COMPLETED"]
        wake = sorted(t * 1000 - int(r.hget(Keys("waiters").job(a["id"]), "finished"))
                      for a, t in ok)
        cuts = statistics.quantiles(wake, n=100) if len(wake) > 1 else [0] * 99
        print(f"waiters: {n} /runsync waiting on one gateway: {len(ok)} answered COMPLETED, "
              f"{len(bad)} not{(' (first: ' + str(bad[0])[:160] + ')') if bad else ''}; "
              f"gateway connections to Redis, peak {peak[0]}; /health while they wait p50 "
              f"{statistics.median(h for h, _ in health):.1f} ms (codes "
              f"{sorted({c for _, c in health})}); wake-up after the final record p50 "
              f"{statistics.median(wake) if wake else 0:.1f} ms, p99 {cuts[98]:.1f} ms",
              flush=True)
    finally:
        done.set()
        for w in workers:
            w.stop()
        gw.stop()
        srv.close()


if __name__ == "__main__":
    print(f"bench_waiters: {os.cpu_count()} CPUs; Redis, gateway, workers and clients on "
          "this machine", flush=True)
    with loopback.only():
        main()
