"""The local API's trivial /runsync, this tree against another commit, alternated round by
round: the parent's CPU time per request (user + system, read from /proc around the
requests) and the p50 a client waits, with the same handler (bench/handlers/rp_trivial.py)
and the same client (one requests session, one request after another).

    .venv/bin/python bench/bench_runsync.py --base <commit>     # e.g. 9eb5f24

Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import psutil
import requests

import loopback
from bench_api import free_port
from bench_metrics import alternated

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
HANDLER = str(ROOT / "bench" / "handlers" / "rp_trivial.py")
BODY = b'{"input": {"prompt": "hi"}}'


def measure(tree: Path, requests_n: int) -> tuple:
    """(parent CPU µs per request, p50 ms) for one worker of `tree`."""
    port = free_port()
    env = {**os.environ, **loopback.env_with(tree), "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
           "RUNPOD_LOG_LEVEL": "WARN"}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    proc = subprocess.Popen([PYTHON, "-m", "worker", HANDLER, "--rp_serve_api",
                             "--rp_api_port", str(port)], env=env, cwd="/tmp",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        session = requests.Session()
        session.trust_env = False
        url = f"http://127.0.0.1:{port}/runsync"
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.post(url, data=BODY, timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{tree} did not serve /runsync")
            time.sleep(0.1)
        for _ in range(200):                     # warm: the first requests pay imports
            session.post(url, data=BODY)
        parent = psutil.Process(proc.pid)
        cpu0 = sum(parent.cpu_times()[:2])
        times = []
        for _ in range(requests_n):
            t0 = time.perf_counter()
            answer = session.post(url, data=BODY)
            times.append(time.perf_counter() - t0)
            assert answer.json().get("status") == "COMPLETED", answer.text[:200]
        cpu = (sum(parent.cpu_times()[:2]) - cpu0) / requests_n * 1e6
        return cpu, statistics.median(times) * 1000
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=1500)
    args = ap.parse_args()
    labels = (f"base {args.base}", "this tree")
    got: dict = {label: [] for label in labels}
    for r, label, tree in alternated(args.base, args.rounds):
        cpu, p50 = measure(tree, args.requests)
        got[label].append((cpu, p50))
        print(f"round {r + 1}, {label}: parent CPU {cpu:.0f} us/request, p50 "
              f"{p50:.3f} ms", flush=True)
    for label in labels:
        cpu = statistics.median(c for c, _ in got[label])
        p50 = statistics.median(p for _, p in got[label])
        print(f"median of {args.rounds}, {label}: parent CPU {cpu:.0f} us per trivial "
              f"/runsync, p50 {p50:.3f} ms ({args.requests} requests a round)", flush=True)


if __name__ == "__main__":
    with loopback.only():
        main()
