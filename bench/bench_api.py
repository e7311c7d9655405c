"""Job sources against runpod-python 1.12, side by side in one run, same handlers:

- the RunPod queue protocol on the stand-in queue (tests/fake_runpod.py): jobs/s for a
  trivial sync handler at concurrency 1, and for an async handler awaiting 50 ms at
  concurrency 32 (ideal: 640 jobs/s);
- /runsync latency (p50, p99) of the local API against runpod-python's dev server
  (--rp_serve_api), for a trivial input and a 10 MB input.

    make bench-api      # or: .venv/bin/python bench/bench_api.py

runpod-python runs from its own virtual environment (bench/.venv-runpod), made on first
use. Prints figures; asserts nothing.
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

import loopback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.fake_runpod import FakeRunPod  # noqa: E402

OURS = [str(ROOT / ".venv" / "bin" / "python"), "-m", "worker"]
SDK_VENV = HERE / ".venv-runpod"
SDK = [str(SDK_VENV / "bin" / "python")]
QUIET = {"RUNPOD_LOG_LEVEL": "WARN", "UVICORN_LOG_LEVEL": "warning"}


def ensure_sdk() -> None:
    if not (SDK_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(SDK_VENV)], check=True)
    probe = subprocess.run([*SDK, "-c", "import runpod; print(runpod.__version__)"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "1.12.0":
        subprocess.run([*SDK, "-m", "pip", "install", "-q", "runpod==1.12.0"], check=True,
                       env=loopback.outside(os.environ))      # the one download


def queue_rate(cmd, handler, jobs, seconds) -> tuple:
    """Jobs/s between the first and the last result the stand-in queue received."""
    with FakeRunPod(long_poll=0.5) as q:
        q.add_jobs([{"id": f"j{i}", "input": {"i": i}} for i in range(jobs)])
        env = {**os.environ, **q.env(), **QUIET}
        proc = subprocess.Popen([*cmd, str(HERE / "handlers" / handler)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            q.wait_for(lambda f: len(f.finals) >= jobs, seconds)
        finally:
            end(proc)
        done = len(q.finals)
        dupes = sum(len(v) - 1 for v in q.finals.values())
        span = (q.last_done_at or 0) - (q.first_done_at or 0)
        rate = (done - 1) / span if done > 1 and span > 0 else 0.0
        return rate, done, dupes


CLIENT = r"""
import json, sys, threading, time, requests
url, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"output": {"ok": True}}).encode()
def run(k):
    s = requests.Session(); s.trust_env = False
    for i in range(n):
        s.post(url.replace("JOB", f"c{k}-{i}"), data=body)
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
t = time.time(); [x.start() for x in ts]; [x.join() for x in ts]
print(n * threads / (time.time() - t))
"""


def stand_in_capacity(threads: int, n: int = 400) -> float:
    """Job-done posts/s the stand-in queue takes from one process of `requests` clients:
    the ceiling any worker measured against it can reach."""
    with FakeRunPod(long_poll=0) as q:
        url = q.base + "/job-done/w1/JOB?gpu=SIM&isStream=false"
        out = subprocess.run([*OURS[:1], "-c", CLIENT, url, str(n), str(threads)],
                             capture_output=True, text=True, check=True)
        return float(out.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runsync_latency(cmd, handler, extra, bodies) -> list:
    port = free_port()
    env = {**os.environ, **QUIET}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    proc = subprocess.Popen([*cmd, str(HERE / "handlers" / handler), *extra,
                             "--rp_api_port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/runsync"
    try:
        session = requests.Session()
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.post(url, json={"input": {"warm": 1}}, timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{cmd} did not serve /runsync")
            time.sleep(0.2)
        out = {}
        for name, (body, n) in bodies.items():
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = session.post(url, data=body, timeout=120,
                                 headers={"Content-Type": "application/json"})
                times.append(time.perf_counter() - t0)
                assert r.json().get("status") == "COMPLETED", r.text[:200]
            out[name] = times
        return out
    finally:
        end(proc)


def end(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def pct(values, p) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--only", choices=["queue", "runsync"])
    ap.add_argument("--ours-only", action="store_true",
                    help="skip runpod-python (e.g. to compare two commits of ours)")
    args = ap.parse_args()
    if args.ours_only:
        return ours_only(args)
    ensure_sdk()
    print(f"machine: {os.cpu_count()} cpus, Python {sys.version.split()[0]}; "
          "runpod-python 1.12.0 in bench/.venv-runpod")

    for threads in (1, 4):
        print(f"stand-in queue capacity: {stand_in_capacity(threads):,.0f} job-done posts/s "
              f"from {threads} requests thread(s)")
    cases = [("trivial sync handler, concurrency 1", "rp_trivial.py", 4000, 60),
             ("async handler awaiting 50 ms, concurrency 32 (ideal 640/s)", "rp_async.py", 6000, 400)]
    for label, handler, ours_jobs, sdk_jobs in cases if args.only != "runsync" else []:
        ours = queue_rate(OURS, handler, ours_jobs, args.seconds)
        sdk = queue_rate(SDK, handler, sdk_jobs, args.seconds)
        print(f"queue, {label}: gpu-worker {ours[0]:,.1f} jobs/s ({ours[1]} done, "
              f"{ours[2]} duplicates); runpod-python {sdk[0]:,.1f} jobs/s ({sdk[1]} done, "
              f"{sdk[2]} duplicates)")

    if args.only == "queue":
        return
    bodies = runsync_bodies()
    ours = runsync_latency(OURS, "rp_trivial.py", ["--rp_serve_api"], bodies)
    sdk = runsync_latency(SDK, "rp_trivial.py", ["--rp_serve_api"], bodies)
    for name in bodies:
        print(f"/runsync, {name}: gpu-worker p50 {pct(ours[name], 50):.2f} ms, p99 "
              f"{pct(ours[name], 99):.2f} ms; runpod-python dev server p50 "
              f"{pct(sdk[name], 50):.2f} ms, p99 {pct(sdk[name], 99):.2f} ms "
              f"({len(ours[name])} requests each)")


def runsync_bodies() -> dict:
    small = (b'{"input": {"prompt": "hi"}}', 300)
    big = (b'{"input": {"data": "' + b"a" * (10 * 2**20 - 64) + b'"}}', 30)
    return {"trivial input": small, "10 MB input": big}


def ours_only(args) -> None:
    """Our figures alone: the `python -m worker` found from the current directory (run
    from outside the repository with PYTHONPATH=<checkout> to measure another commit)."""
    where = subprocess.run([OURS[0], "-c", "import worker; print(worker.__file__)"],
                           capture_output=True, text=True).stdout.strip()
    print(f"gpu-worker from {where}")
    if args.only != "queue":
        ours = runsync_latency(OURS, "rp_trivial.py", ["--rp_serve_api"], runsync_bodies())
        for name, times in ours.items():
            print(f"/runsync, {name}: p50 {pct(times, 50):.2f} ms, p99 {pct(times, 99):.2f} ms")
    if args.only != "runsync":
        for label, handler, jobs in (("trivial sync handler, concurrency 1", "rp_trivial.py",
                                      4000),
                                     ("async handler awaiting 50 ms, concurrency 32",
                                      "rp_async.py", 6000)):
            for _ in range(2):
                rate = queue_rate(OURS, handler, jobs, args.seconds)
                print(f"queue, {label}: {rate[0]:,.1f} jobs/s ({rate[1]} done, "
                      f"{rate[2]} duplicates)")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
