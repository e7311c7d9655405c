"""One endpoint on Redis Streams: jobs/s and p50 latency through the gateway with 1, 2 and
3 workers, for a trivial handler and a 200 ms one, and the local API (one machine, no
Redis) for contrast — in one run, on one machine.

    make bench-fleet         # or: .venv/bin/python bench/bench_fleet.py [--jobs-per-worker 40]

Latency: sequential /runsync calls (one client), p50 and p90 of the round trip (the first
tenth left out: connections warming up). Rate: 8 client threads sending /runsync, jobs
over the time from the first send to the last answer, as clients see it. Every job must
end COMPLETED, and through the gateway be counted exactly once in the endpoint's final
records, else the run fails.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

import loopback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.fleet_support import REDIS, Gateway, Proc, RedisServer, fleet_env  # noqa: E402
from tests.support import PYTHON, _free_port  # noqa: E402
from worker.fleet.keys import Keys  # noqa: E402

QUIET = {"WORKER_LOG_LEVEL": "WARN", "RUNPOD_LOG_LEVEL": "WARN"}
HANDLERS = {"trivial": HERE / "handlers" / "trivial.py",
            "sleep 200 ms": HERE / "handlers" / "sleep200.py"}


def latency(url: str, n: int) -> tuple:
    s = requests.Session()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        r = s.post(url + "/runsync", json={"input": {"i": i}}, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.json()["status"] == "COMPLETED", r.text
    times = times[max(1, n // 10):]          # the first calls warm connections up
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


def rate(url: str, jobs: int) -> float:
    """Jobs/s as clients see them: 8 threads each sending /runsync, from the first send to
    the last answer (every answer COMPLETED)."""
    sessions = [requests.Session() for _ in range(8)]

    def one(i):
        r = sessions[i % 8].post(url + "/runsync", json={"input": {"i": i}}, timeout=120)
        assert r.json()["status"] == "COMPLETED", r.text
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.perf_counter() - t0)


def ended_once(srv: RedisServer, endpoint: str, jobs: int) -> None:
    """Every job of the run (the warm-up, the latency calls, the rate's) COMPLETED, each
    counted once in the endpoint's final records."""
    counts = {k.decode(): int(v) for k, v in srv.client().hgetall(Keys(endpoint).counts).items()}
    assert counts == {"COMPLETED": jobs}, counts


def local_api(handler: Path, folder: Path, jobs: int, n_lat: int) -> tuple:
    port = _free_port()
    env = {**os.environ, **QUIET}
    env.pop("WORKER_QUEUE_URL", None)
    proc = subprocess.Popen([PYTHON, "-m", "worker", "serve", str(handler), "--rp_api_port",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        p50, p90 = latency(url, n_lat)
        return rate(url, jobs), p50, p90
    finally:
        proc.terminate()
        proc.wait(60)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs-per-worker", type=int, default=40)
    p.add_argument("--trivial-jobs", type=int, default=600)
    p.add_argument("--latency-calls", type=int, default=300)
    args = p.parse_args()
    if REDIS is None:
        raise SystemExit("no redis-server: `make redis` installs it")
    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    print(f"bench_fleet: {os.cpu_count()} CPUs; Redis, gateway, workers and client on this "
          "machine", flush=True)
    for name, handler in HANDLERS.items():
        slow = name != "trivial"
        n_lat = 20 if slow else args.latency_calls
        base = None
        for workers in (1, 2, 3):
            srv = RedisServer(folder / f"redis-{workers}-{slow}")
            endpoint = f"bench{workers}"
            gw = Gateway(srv, endpoint, folder, name=f"gw-{workers}", **QUIET)
            procs = [Proc([PYTHON, "-m", "worker", str(handler)],
                          fleet_env(srv, endpoint, **QUIET), folder / f"w{workers}-{i}.log",
                          cwd=folder) for i in range(workers)]
            try:
                gw.post("/runsync", {"input": {"i": -1}})
                deadline = time.monotonic() + 60
                while gw.get("/health").json()["workers"]["alive"] < workers:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                p50, p90 = latency(gw.url, n_lat)
                jobs = args.jobs_per_worker * workers if slow else args.trivial_jobs
                jobs_s = rate(gw.url, jobs)
                ended_once(srv, endpoint, 1 + n_lat + jobs)
                base = base or jobs_s
                print(f"{name}, gateway, {workers} worker(s): {jobs_s:.1f} jobs/s "
                      f"({jobs_s / base:.2f}x one worker; {jobs} jobs), /runsync p50 "
                      f"{p50:.2f} ms, p90 {p90:.2f} ms", flush=True)
            finally:
                for proc in procs:
                    proc.stop()
                gw.stop()
                srv.close()
        jobs = args.jobs_per_worker if slow else args.trivial_jobs
        jobs_s, p50, p90 = local_api(handler, folder, jobs, n_lat)
        print(f"{name}, local API, 1 worker: {jobs_s:.1f} jobs/s ({jobs} jobs), /runsync p50 "
              f"{p50:.2f} ms, p90 {p90:.2f} ms", flush=True)


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
