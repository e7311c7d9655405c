"""Metrics on, against the commit before them: the queue rows (bench_api.queue_rate, the
stand-in queue) and the channel row (bench_core.jobs_per_second, with the parent's CPU
time per job), for this tree and for BASE, alternated, `--rounds` times; medians at the
end. This tree runs with WORKER_METRICS_PORT set and
/metrics scraped every second during the queue rows (Prometheus' usual interval is 15 s);
the base tree has no metrics. Same machine, same handler files, same stand-in queue.

    python bench/bench_metrics.py --base c32cc75 --rounds 4
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import requests

import loopback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import bench_api  # noqa: E402
from bench_api import free_port  # noqa: E402


def base_tree(rev: str) -> Path:
    """A worktree of `rev` sharing this tree's virtual environments."""
    path = Path(f"/tmp/gpu-worker-base-{rev}")
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach",
                        str(path), rev], check=True, capture_output=True)
        (path / ".venv").symlink_to(ROOT / ".venv")
        if (ROOT / "bench" / ".venv-runpod").exists():
            (path / "bench" / ".venv-runpod").symlink_to(ROOT / "bench" / ".venv-runpod")
    return path


def alternated(rev: str, rounds: int):
    """(round, label, tree) for a worktree of `rev` ("base <rev>") and this tree ("this
    tree"), their order swapped each round; the worktree is removed at the end."""
    base = base_tree(rev)
    trees = ((f"base {rev}", base), ("this tree", ROOT))
    try:
        for r in range(rounds):
            for label, tree in (trees if r % 2 == 0 else trees[::-1]):
                yield r, label, tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                       capture_output=True)


def scraper(port: int, stop: threading.Event, answered: list) -> None:
    session = requests.Session()
    session.trust_env = False
    while not stop.wait(1.0):
        try:
            if session.get(f"http://127.0.0.1:{port}/metrics", timeout=5).ok:
                answered.append(1)
        except requests.RequestException:
            pass


QUEUE = [("trivial handler, concurrency 1", "rp_trivial.py", 6000),
         ("async handler awaiting 50 ms, concurrency 32", "rp_async.py", 8000)]


def queue_row(tree: Path, metrics: bool, seconds: float) -> list:
    """bench_api.queue_rate for each QUEUE handler, with this tree's worker."""
    port = free_port()
    saved = dict(os.environ)
    os.environ.update(loopback.env_with(tree))
    if metrics:
        os.environ["WORKER_METRICS_PORT"] = str(port)
    stop, answered = threading.Event(), []
    t = threading.Thread(target=scraper, args=(port, stop, answered), daemon=True)
    t.start()
    try:
        rates = [bench_api.queue_rate(bench_api.OURS, handler, jobs, seconds)[0]
                 for _, handler, jobs in QUEUE]
    finally:
        stop.set()
        t.join()
        os.environ.clear()
        os.environ.update(saved)
    if metrics:
        assert answered, "no scrape was answered"
    return rates


CHANNEL = """
import sys, time
def main():
    tree, n = sys.argv[1], int(sys.argv[2])
    sys.path[:0] = [tree, tree + "/bench"]
    import bench_core
    t0 = time.process_time()
    rate = bench_core.jobs_per_second("trivial.py", n)
    print(rate, (time.process_time() - t0) / (n + 200) * 1e6)
if __name__ == "__main__":
    main()
"""


def channel_row(tree: Path, jobs: int = 20000) -> tuple:
    """The channel row of bench_perf.py (bench_core.jobs_per_second: trivial jobs through
    a supervisor in the bench's process) from `tree`: jobs/s, and the parent's CPU time
    per job (all its threads; less noisy than the rate on a shared machine)."""
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", CHANNEL, str(tree),
                          str(jobs)], cwd="/tmp", env={**os.environ, **loopback.env_with(tree)},
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    rate, cpu = out.stdout.split()[-2:]
    return float(rate), float(cpu)


def per_job_costs(n: int = 100_000) -> None:
    """What the metrics add to one job in this tree's parent, by call (microseconds)."""
    import timeit
    sys.path.insert(0, str(ROOT))
    from worker.jobs import JobResult, JobState, Reason
    from worker.parent.metrics import Metrics
    from worker.parent.monitor import HostProbe
    m = Metrics(lambda: None, HostProbe())
    r = JobResult("j", JobState.COMPLETED, Reason.COMPLETED, {}, ran=True, delay_ms=1,
                  execution_ms=2)
    calls = {"ended (the loop)": lambda: m.loop.ended(r),
             "bytes in + out": lambda: (m.bytes_in.inc(100), m.bytes_out.inc(100)),
             "post": lambda: m.post("done", "delivered"),
             "delivered": lambda: m.delivered("runpod", 0.01)}
    costs = {k: timeit.timeit(f, number=n) / n * 1e6 for k, f in calls.items()}
    print("per job, in the parent: " + "; ".join(f"{k} {v:.1f} us" for k, v in costs.items())
          + f"; {sum(costs.values()):.1f} us in all (a RunPod job: all four; the channel "
          "row: the loop's alone)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="c32cc75", help="the commit before metrics")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0, help="per queue measurement")
    args = ap.parse_args()
    per_job_costs()
    base = base_tree(args.base)
    got: dict = {}
    try:
        for r in range(args.rounds):
            for label, tree, metrics in ((f"base {args.base}", base, False),
                                         ("metrics on", ROOT, True)):
                rate, cpu = channel_row(tree)
                rates = queue_row(tree, metrics, args.seconds) + [rate, cpu]
                got.setdefault(label, []).append(rates)
                print(f"round {r + 1}, {label}: " + "; ".join(
                    f"{name} {rate:,.0f} jobs/s" for name, rate in
                    zip([q[0] for q in QUEUE] + ["channel"], rates))
                    + f" (parent CPU {cpu:.1f} us a job)", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                       capture_output=True)
    names = [f"queue, {q[0]}" for q in QUEUE] + ["channel, trivial jobs",
                                                 "channel, parent CPU per job"]
    for i, name in enumerate(names):
        b = statistics.median(x[i] for x in got[f"base {args.base}"])
        m = statistics.median(x[i] for x in got["metrics on"])
        unit = " us" if "CPU" in name else " jobs/s"
        print(f"median of {args.rounds}, {name}: base {b:,.1f}{unit}, metrics on "
              f"{m:,.1f}{unit} ({m / b - 1:+.1%})")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
