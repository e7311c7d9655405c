"""This tree against another commit, alternated round by round, on the rows a change to the
supervisor's structure must not slow down:

- bench_core: trivial jobs through parent and child (sync and async handlers, 20,000
  jobs, with the parent's CPU time per job), and refresh -> next job starts (torch handler,
  WORKER_PRELOAD=torch, 7 refreshes, median);
- make bench-perf's queue rows (bench_api.queue_rate through the stand-in RunPod queue):
  trivial handler at concurrency 1, async 50 ms handler at concurrency 32;
- the local API's /runsync for a trivial input (bench_api.runsync_latency: p50 over 600
  requests, one after another, as the official client would send them).

Each tree runs in its own processes (PYTHONPATH names the tree), same machine, same
handler files; the medians of the rounds are compared at the end.

    make bench-against BASE=<commit>      # or: python bench/bench_against.py --base <commit>
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import loopback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import bench_api  # noqa: E402
from bench_metrics import alternated  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")

CORE = """
import json, statistics, sys, time
tree, jobs, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [tree, tree + "/bench"]
import bench_core
out = {}
t0 = time.process_time()
out["sync"] = bench_core.jobs_per_second("trivial.py", jobs)
out["cpu"] = (time.process_time() - t0) / (jobs + 200) * 1e6
out["async"] = bench_core.jobs_per_second("trivial_async.py", jobs)
gaps = bench_core.refresh_to_next_job(rounds, preload=("torch",))
out["refresh"] = statistics.median(gaps) * 1000
print(json.dumps(out))
"""

QUEUE = [("queue, trivial handler, concurrency 1", "rp_trivial.py", 6000),
         ("queue, async 50 ms handler, concurrency 32", "rp_async.py", 8000)]

ROWS = [("trivial sync jobs through parent and child", "sync", "jobs/s", +1),
        ("parent CPU per trivial sync job", "cpu", "us", -1),
        ("trivial async jobs through parent and child", "async", "jobs/s", +1),
        ("refresh -> next job starts (torch, WORKER_PRELOAD=torch)", "refresh", "ms", -1),
        (QUEUE[0][0], "q0", "jobs/s", +1),
        (QUEUE[1][0], "q1", "jobs/s", +1),
        ("local API /runsync p50, trivial input", "runsync", "ms", -1)]
RUNSYNC_REQUESTS = 600


def core_rows(tree: Path, jobs: int, rounds: int) -> dict:
    out = subprocess.run([PYTHON, "-c", CORE, str(tree), str(jobs), str(rounds)], cwd="/tmp",
                         env={**os.environ, **loopback.env_with(tree)}, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def queue_rows(tree: Path, seconds: float) -> dict:
    saved = dict(os.environ)
    os.environ.update(loopback.env_with(tree))
    try:
        row = {f"q{i}": bench_api.queue_rate(bench_api.OURS, handler, jobs, seconds)[0]
               for i, (_, handler, jobs) in enumerate(QUEUE)}
        times = bench_api.runsync_latency(bench_api.OURS, "rp_trivial.py", ["--rp_serve_api"],
                                          {"trivial": (b'{"input": {"prompt": "hi"}}',
                                                       RUNSYNC_REQUESTS)})["trivial"]
        row["runsync"] = bench_api.pct(times, 50)
        return row
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--refreshes", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=60.0, help="limit per queue row")
    args = ap.parse_args()
    b_label, t_label = f"base {args.base}", "this tree"
    got: dict = {b_label: [], t_label: []}
    for r, label, tree in alternated(args.base, args.rounds):
        row = {**core_rows(tree, args.jobs, args.refreshes), **queue_rows(tree, args.seconds)}
        got[label].append(row)
        print(f"round {r + 1}, {label}: " + "; ".join(
            f"{key} {row[key]:,.{3 if unit == 'ms' else 1}f} {unit}"
            for _, key, unit, _ in ROWS), flush=True)
    for name, key, unit, better in ROWS:
        b = statistics.median(x[key] for x in got[b_label])
        t = statistics.median(x[key] for x in got[t_label])
        change = t / b - 1
        verdict = "better" if change * better > 0 else "worse"
        digits = 3 if unit == "ms" else 1
        print(f"median of {args.rounds}, {name}: {b_label} {b:,.{digits}f} {unit}, this tree "
              f"{t:,.{digits}f} {unit} ({change:+.1%}, {verdict})", flush=True)


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
