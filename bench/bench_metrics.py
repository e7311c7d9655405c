"""Metrics on, against the commit before them: bench_perf.py's queue and channel rows for
this tree and for BASE, alternated, each tree `--rounds` times. This tree runs with
WORKER_METRICS_PORT set and /metrics scraped every second while the rows run (a far
shorter interval than Prometheus' usual 15 s); the base tree has no metrics. Same
machine, same handlers, same stand-in queue.

    python bench/bench_metrics.py --base c32cc75 --rounds 2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
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


def scraper(port: int, stop: threading.Event, answered: list) -> None:
    session = requests.Session()
    session.trust_env = False
    while not stop.wait(1.0):
        try:
            if session.get(f"http://127.0.0.1:{port}/metrics", timeout=5).ok:
                answered.append(1)
        except requests.RequestException:
            pass


def rows(tree: Path, label: str, only: str, metrics: bool, quick: bool) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if metrics:
        env["WORKER_METRICS_PORT"] = str(port)
    stop, answered = threading.Event(), []
    t = threading.Thread(target=scraper, args=(port, stop, answered), daemon=True)
    t.start()
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"),
                          str(tree / "bench" / "bench_perf.py"), "--only", only,
                          *(["--quick"] if quick else [])],
                         cwd="/tmp", env=env, capture_output=True, text=True)
    stop.set()
    t.join()
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    for line in out.stdout.splitlines():
        if line.startswith(("queue", "channel")):
            print(f"{label}: {line}" + (f" [{len(answered)} scrapes answered]"
                                        if metrics and only == "queue" else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="c32cc75", help="the commit before metrics")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["queue", "channel"], action="append")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    base = base_tree(args.base)
    try:
        for r in range(args.rounds):
            for only in args.only or ["queue", "channel"]:
                rows(base, f"base {args.base} (no metrics), round {r + 1}", only, False,
                     args.quick)
                rows(ROOT, f"metrics on, round {r + 1}", only, True, args.quick)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                       capture_output=True)


if __name__ == "__main__":
    main()
