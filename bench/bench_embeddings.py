"""The embeddings example (all-MiniLM-L6-v2): cold start (start to the first job done) and
refresh-to-next-job, with WORKER_PRELOAD=torch,sentence_transformers and without.
On the GPU when there is one (gpu_tests/run.sh), else on the CPU.

    .venv/bin/python bench/bench_embeddings.py [--rounds N]

Each case runs in a fresh process (the forkserver is one per process). Prints figures.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import loopback

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "examples" / "embeddings" / "handler.py"
PRELOAD = ("torch", "sentence_transformers")
CASES = ("plain", "preload", "warm")


def one_case(case: str, rounds: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from worker.targets import ScriptTarget
    from worker.config import Settings
    from worker.parent.supervisor import JobListener, Supervisor

    class Wait(JobListener):
        def __init__(self):
            self.starts, self.ends, self.results = {}, {}, {}
            self.cond = threading.Condition()

        def on_start(self, job_id):
            self.starts[job_id] = time.perf_counter()

        def on_result(self, result):
            with self.cond:
                self.ends[result.job_id] = time.perf_counter()
                self.results[result.job_id] = result
                self.cond.notify_all()

        def wait(self, job_id):
            with self.cond:
                self.cond.wait_for(lambda: job_id in self.results, 600)
            return self.results[job_id]

    t0 = time.perf_counter()
    settings = Settings(preload=PRELOAD if case != "plain" else (), setup_timeout=600,
                        warm_refresh=case == "warm")
    sup = Supervisor(settings, ScriptTarget(str(HANDLER))).start()
    w = Wait()
    sup.submit({"id": "first", "input": {"text": "again"}}, w)
    first = w.wait("first")
    cold = w.ends["first"] - t0
    assert first.state.value == "COMPLETED", first.body
    gaps = []
    for r in range(rounds):
        sup.refresh("bench")
        sup.submit({"id": f"n{r}", "input": {"text": "again"}}, w)
        same = w.wait(f"n{r}").output["embeddings"] == first.output["embeddings"]
        assert same, "a fresh child answered differently"
        gaps.append(w.starts[f"n{r}"] - w.ends["first" if r == 0 else f"n{r - 1}"])
    warm = sup.snapshot()["warm_refresh"]
    sup.stop()
    sup.join(60)
    return {"cold_s": cold, "refresh_ms": [g * 1000 for g in gaps],
            "device": first.output["device"], "warm": warm}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--case", choices=CASES)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.rounds)))
        return
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--rounds",
                              str(args.rounds)], capture_output=True, text=True,
                             env={**os.environ, "WORKER_LOG_LEVEL": "WARN"})
        if out.returncode != 0:
            print(out.stderr[-2000:])
            raise SystemExit(f"{case} failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = {"plain": "no preload", "preload": "WORKER_PRELOAD=torch,sentence_transformers",
                 "warm": f"the same + WORKER_WARM_REFRESH (warm refresh: {r['warm']})"}[case]
        print(f"embeddings on {r['device']}, {label}: cold start to first job done "
              f"{r['cold_s']:.2f} s; refresh-to-next-job median "
              f"{statistics.median(r['refresh_ms']):.0f} ms, max {max(r['refresh_ms']):.0f} ms "
              f"({len(r['refresh_ms'])} rounds, same embeddings after each)")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
