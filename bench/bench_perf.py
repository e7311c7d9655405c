"""Every row of the performance issue's table, in one run, against runpod-python 1.12 where
it has a row (same machine, same handler files, same stand-in queue):

- the RunPod queue: trivial handler at concurrency 1, async 50 ms handler at concurrency 32;
- /runsync p50, trivial and 10 MB input, against runpod-python's dev server;
- the parent-child channel (trivial jobs) beside a bare pipe echo;
- refresh -> next job with WORKER_PRELOAD=torch, in the supervisor and from the stand-in
  queue (every job returns refresh_worker);
- the embeddings example's refresh on the CPU: preloaded imports, and warm refresh;
- PSS of every process serving the embeddings example, against runpod-python's one.

    make bench-perf      # or: .venv/bin/python bench/bench_perf.py [--quick]

Prints figures; asserts nothing but that answers match. docs/benchmarks.md records a run.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import loopback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_api  # noqa: E402
import bench_core  # noqa: E402
from tests.fake_runpod import FakeRunPod  # noqa: E402

OURS = bench_api.OURS
SDK = bench_api.SDK
MAIN_PY = str(ROOT / ".venv" / "bin" / "python")     # has the real SDK, torch and the model
QUIET = {"RUNPOD_LOG_LEVEL": "WARN", "WORKER_LOG_LEVEL": "WARN"}


def queue_rows(seconds: float) -> None:
    cases = [("trivial handler, concurrency 1", "rp_trivial.py", 4000, 60),
             ("async handler awaiting 50 ms, concurrency 32 (ideal 640/s)", "rp_async.py",
              6000, 400)]
    for label, handler, ours_jobs, sdk_jobs in cases:
        ours = bench_api.queue_rate(OURS, handler, ours_jobs, seconds)
        sdk = bench_api.queue_rate(SDK, handler, sdk_jobs, seconds)
        print(f"queue, {label}: gpu-worker {ours[0]:,.1f} jobs/s ({ours[2]} duplicates); "
              f"runpod-python {sdk[0]:,.1f} jobs/s ({sdk[2]} duplicates)", flush=True)


def runsync_rows() -> None:
    bodies = bench_api.runsync_bodies()
    ours = bench_api.runsync_latency(OURS, "rp_trivial.py", ["--rp_serve_api"], bodies)
    sdk = bench_api.runsync_latency(SDK, "rp_trivial.py", ["--rp_serve_api"], bodies)
    for name in bodies:
        a, b = bench_api.pct(ours[name], 50), bench_api.pct(sdk[name], 50)
        print(f"/runsync p50, {name}: gpu-worker {a:.2f} ms; runpod-python dev server "
              f"{b:.2f} ms; ratio {a / b:.2f} (target <= 0.8; {len(ours[name])} requests "
              "each)", flush=True)


def channel_rows(jobs: int) -> None:
    pipe = bench_core.pipe_baseline(jobs)
    ours = bench_core.jobs_per_second("trivial.py", jobs)
    print(f"channel, trivial jobs through parent and child: {ours:,.0f} jobs/s; bare pipe "
          f"echo in the same run: {pipe:,.0f}/s; ratio {ours / pipe:.0%} (target >= 50%)",
          flush=True)


def refresh_rows(rounds: int) -> None:
    gaps = bench_core.refresh_to_next_job(rounds, preload=("torch",))
    print(f"refresh -> next job starts, torch handler, WORKER_PRELOAD=torch, in the "
          f"supervisor: median {statistics.median(gaps) * 1000:.0f} ms, max "
          f"{max(gaps) * 1000:.0f} ms ({rounds} rounds; target <= 50 ms)", flush=True)
    gaps = queue_refresh(rounds + 1)
    print(f"refresh seen from the stand-in queue (job done -> next job done, each job "
          f"returns refresh_worker; SDK handler importing torch, WORKER_PRELOAD=torch): "
          f"median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms "
          f"({len(gaps)} gaps; target <= 60 ms)", flush=True)


def queue_refresh(jobs: int) -> list:
    with FakeRunPod(long_poll=0.5) as q:
        q.add_jobs([{"id": f"j{i}", "input": {"i": i}} for i in range(jobs)])
        env = {**os.environ, **q.env(), **QUIET, "WORKER_PRELOAD": "torch"}
        proc = subprocess.Popen([*OURS, str(HERE / "handlers" / "rp_torch_refresh.py")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not q.wait_for(lambda f: len(f.finals) >= jobs, 180):
                raise SystemExit("the refresh jobs did not all finish")
        finally:
            bench_api.end(proc)
        times = [q.done_at[f"j{i}"] for i in range(jobs)]
        return [(b - a) * 1000 for a, b in zip(times, times[1:])]


def embeddings_rows(rounds: int) -> None:
    for case, label in (("preload", "WORKER_PRELOAD=torch,sentence_transformers"),
                        ("warm", "the same + WORKER_WARM_REFRESH")):
        out = subprocess.run([MAIN_PY, str(HERE / "bench_embeddings.py"), "--case", case,
                              "--rounds", str(rounds)], capture_output=True, text=True,
                             env={**os.environ, **QUIET})
        if out.returncode != 0:
            raise SystemExit(f"embeddings {case} failed: {out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"embeddings example on {r['device']}, {label} (warm refresh: {r['warm']}): "
              f"refresh -> next job median {statistics.median(r['refresh_ms']):.0f} ms, max "
              f"{max(r['refresh_ms']):.0f} ms ({rounds} rounds, same embeddings after each; "
              f"target with warm refresh <= 150 ms); cold start {r['cold_s']:.1f} s",
              flush=True)


def memory_rows(jobs: int) -> None:
    handler = str(HERE / "handlers" / "rp_embeddings.py")
    sdk = sum(v[0] for v in tree_pss([MAIN_PY, handler], {}, jobs).values())
    preload = {**QUIET, "WORKER_PRELOAD": "torch,sentence_transformers", "WORKER_SPARE": "off"}
    warm = {**preload, "WORKER_WARM_REFRESH": "true"}
    for label, env in (("preloaded imports", preload), ("+ WORKER_WARM_REFRESH", warm),
                       ("preloaded imports + WORKER_SPARE=on", {**preload, "WORKER_SPARE": "on"}),
                       ("+ WORKER_WARM_REFRESH + WORKER_SPARE=on",
                        {**warm, "WORKER_SPARE": "on"})):
        ours = tree_pss([*OURS, handler], env, jobs)
        total = sum(v[0] for v in ours.values())
        parts = ", ".join(f"{k} {pss:.0f} (USS {uss:.0f})" for k, (pss, uss) in ours.items())
        print(f"PSS of the processes serving the embeddings example (after {jobs} jobs), "
              f"{label}: gpu-worker {total:.0f} MB ({parts}); runpod-python {sdk:.0f} MB "
              f"(1 process); ratio {total / sdk:.2f} (target <= 1.1)", flush=True)


def tree_pss(cmd: list, env: dict, jobs: int) -> dict:
    """Serve `jobs` jobs from the stand-in queue, then read the PSS and USS (MB) of the
    process and its descendants, named by their role."""
    import psutil
    with FakeRunPod(long_poll=0.5) as q:
        q.add_jobs([{"id": f"m{i}", "input": {"text": f"text {i}"}} for i in range(jobs)])
        proc = subprocess.Popen(cmd, env={**os.environ, **q.env(), **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not q.wait_for(lambda f: len(f.finals) >= jobs, 300):
                raise SystemExit(f"{cmd} did not finish its jobs")
            time.sleep(1.0)       # let the last job's garbage go before reading
            top = psutil.Process(proc.pid)
            out = {}
            for p in [top, *top.children(recursive=True)]:
                try:
                    line = " ".join(p.cmdline())
                except psutil.ZombieProcess:
                    continue      # runpod-python's import leaves one (py-cpuinfo's)
                role = ("parent" if p.pid == proc.pid else "resource tracker"
                        if "resource_tracker" in line else
                        "forkserver" if p.ppid() == proc.pid else "child")
                mem = p.memory_full_info()
                pss, uss = out.get(role, (0.0, 0.0))
                out[role] = (pss + mem.pss / 2**20, uss + mem.uss / 2**20)
            return out
        finally:
            bench_api.end(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer jobs and rounds")
    ap.add_argument("--only", choices=["queue", "runsync", "channel", "refresh",
                                       "embeddings", "memory"])
    args = ap.parse_args()
    bench_api.ensure_sdk()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()}; runpod-python 1.12.0", flush=True)
    rows = {"queue": lambda: queue_rows(5.0 if args.quick else 20.0),
            "runsync": runsync_rows,
            "channel": lambda: channel_rows(5000 if args.quick else 20000),
            "refresh": lambda: refresh_rows(5 if args.quick else 7),
            "embeddings": lambda: embeddings_rows(3 if args.quick else 5),
            "memory": lambda: memory_rows(5)}
    for name, row in rows.items():
        if args.only in (None, name):
            row()


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
