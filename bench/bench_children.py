"""Several children: a handler that sleeps 200 ms per job, with 1, 2 and 3 children
(WORKER_CHILDREN), through the stand-in RunPod queue. With N children the rate should be
N times one child's (the issue's target: within 10%).

    make bench-children      # or: .venv/bin/python bench/bench_children.py [--jobs-per-child 40]

The rate is counted after the first round (the N-th result to the last), so the children's
start and the first take are not in it. Prints figures; asserts that every job ended once.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import loopback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_api  # noqa: E402
from tests.fake_runpod import FakeRunPod  # noqa: E402

QUIET = {"RUNPOD_LOG_LEVEL": "WARN", "WORKER_LOG_LEVEL": "WARN"}


def rate(children: int, jobs: int) -> tuple:
    with FakeRunPod(long_poll=0.5) as q:
        q.add_jobs([{"id": f"j{i}", "input": {"i": i}} for i in range(jobs)])
        env = {**os.environ, **q.env(), **QUIET, "WORKER_CHILDREN": str(children)}
        proc = subprocess.Popen([*bench_api.OURS, str(HERE / "handlers" / "sleep200.py")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not q.wait_for(lambda f: len(f.finals) >= jobs, 60 + jobs):
                raise SystemExit(f"{children} children: only {len(q.finals)} of {jobs} ended")
        finally:
            bench_api.end(proc)
        assert all(len(v) == 1 for v in q.finals.values()), "a job was reported twice"
        times = sorted(q.done_at.values())
        used = {q.finals[k][0]["output"]["child"] for k in q.finals}
        after_first_round = (jobs - children) / (times[-1] - times[children - 1])
        return after_first_round, len(used)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs-per-child", type=int, default=40)
    args = p.parse_args()
    base = None
    for n in (1, 2, 3):
        jobs_s, used = rate(n, args.jobs_per_child * n)
        base = base or jobs_s
        print(f"sleep 200 ms handler, {n} child{'ren' if n > 1 else ''} "
              f"({args.jobs_per_child * n} jobs through the stand-in queue): {jobs_s:.2f} jobs/s "
              f"= {jobs_s / base:.2f}x one child (ideal {n}x: {jobs_s / (base * n):.0%}); "
              f"children that ran jobs: {used}", flush=True)


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
