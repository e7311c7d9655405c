"""Python calls per job in the supervisor's loop thread (cProfile), for 20,000 trivial jobs
through parent and child: what the loop's own code costs per job, independent of the
machine's speed. `--tree` runs another checkout (a worktree of an earlier commit).

    python bench/profile_loop.py [--tree PATH] [--handler trivial_async.py] [--top 0]
"""
import argparse
import subprocess
import sys
from pathlib import Path

import loopback

ROOT = Path(__file__).resolve().parent.parent

RUN = """
import cProfile, pstats, sys
tree, handler, jobs, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [tree, tree + "/bench"]
import bench_core
import worker.parent.supervisor as S
prof = cProfile.Profile()
loop = S.Supervisor._loop
def profiled(self):
    prof.enable()
    try:
        loop(self)
    finally:
        prof.disable()
S.Supervisor._loop = profiled
bench_core.jobs_per_second(handler, jobs)
stats = pstats.Stats(prof)
print(f"{tree}: {stats.total_calls / (jobs + 200):.1f} Python calls per job in the loop "
      f"thread ({handler}, {jobs} jobs + 200 warm-up)")
if top:
    stats.sort_stats("ncalls").print_stats(top)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(ROOT))
    ap.add_argument("--handler", default="trivial_async.py")
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--top", type=int, default=0, help="also list the most called functions")
    args = ap.parse_args()
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", RUN, args.tree,
                    args.handler, str(args.jobs), str(args.top)], cwd="/tmp",
                   env={**loopback.env_with(args.tree), "PATH": "/usr/bin:/bin"}, check=True)


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
