"""A spare child against none, through the stand-in RunPod queue (tests/fake_runpod.py):
from a job's result (or a crash's FAILED) reaching the queue to the next job starting in
the handler, with a 1.5 s set-up and 2 s jobs, after `refresh_worker` and after a crash;
and, with a CPU-bound set-up, how much CPU work a job gets done while a spare builds
beside it (2 cores here).

    .venv/bin/python bench/bench_spare.py [--rounds 6] [--setup 1.5] [--job 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import loopback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.fake_runpod import FakeRunPod  # noqa: E402

PYTHON = str(HERE.parent / ".venv" / "bin" / "python")


def run(spare: str, rounds: int, setup: float, job_s: float, cpu: bool) -> dict:
    """rounds × (refresh job, next job, crash job, next job); the gaps and work."""
    jobs = []
    for r in range(rounds):
        jobs += [{"id": f"refresh{r}", "input": {"job_s": job_s, "refresh": True}},
                 {"id": f"after_refresh{r}", "input": {"job_s": job_s}},
                 {"id": f"crash{r}", "input": {"job_s": job_s, "crash": True}},
                 {"id": f"after_crash{r}", "input": {"job_s": job_s}}]
    with FakeRunPod(long_poll=0.5) as q:
        env = {**os.environ, **q.env(), "WORKER_SPARE": spare, "WORKER_LOG_LEVEL": "WARNING",
               "SPARE_BENCH_SETUP_S": str(setup), "WORKER_JOB_MAX_CRASHES": "1",
               **({"SPARE_BENCH_CPU": "1"} if cpu else {})}
        proc = subprocess.Popen([PYTHON, "-m", "worker", str(HERE / "handlers" /
                                                               "spare_bench.py")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for job in jobs:            # one at a time: each waits for the one before
                q.add_jobs([job])
                q.wait_final([job["id"]], timeout=120)
        finally:
            proc.terminate()
            proc.wait(60)
        out = {"refresh": [], "crash": [], "work": [], "lost": 0}
        for r in range(rounds):
            for kind in ("refresh", "crash"):
                first = q.finals[f"{kind}{r}"][0]
                after = q.finals[f"after_{kind}{r}"][0]
                if after.get("status") == "FAILED" or (kind == "refresh"
                                                       and first.get("status") == "FAILED"):
                    out["lost"] += 1
                    continue
                started = after["output"]["started"]
                out[kind].append((started - q.done_at[f"{kind}{r}"]) * 1000)
                out["work"].append(after["output"]["work"])
        out["dupes"] = sum(len(v) - 1 for v in q.finals.values())
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--setup", type=float, default=1.5)
    ap.add_argument("--job", type=float, default=2.0)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; set-up {args.setup:g} s, jobs {args.job:g} s, "
          f"{args.rounds} rounds of refresh + crash")
    for cpu in (False, True):
        for spare in ("off", "on"):
            r = run(spare, args.rounds, args.setup, args.job, cpu)
            label = f"set-up {'CPU-bound' if cpu else 'sleep'}, WORKER_SPARE={spare}"
            for kind in ("refresh", "crash"):
                g = r[kind]
                print(f"{label}: {kind} -> next job starts: median {statistics.median(g):,.1f}"
                      f" ms (min {min(g):,.1f}, max {max(g):,.1f}; n={len(g)})")
            print(f"{label}: CPU work per 2 s job after a replacement: median "
                  f"{statistics.median(r['work']):,.0f} units; jobs lost {r['lost']}, "
                  f"results posted twice {r['dupes']}")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
