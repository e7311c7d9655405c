"""For bench/bench_spare.py: a set-up of SPARE_BENCH_SETUP_S (a sleep, or CPU work with
SPARE_BENCH_CPU=1: a model build standing in), jobs that say when they started (the
system's monotonic clock, shared by every process) and how long their own CPU work took."""
import os
import time

import worker


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


SETUP_S = float(os.environ.get("SPARE_BENCH_SETUP_S", "1.5"))
if os.environ.get("SPARE_BENCH_CPU"):
    _spin(SETUP_S)
else:
    time.sleep(SETUP_S)


def handler(job):
    started = time.monotonic()
    inp = job["input"]
    t0 = time.perf_counter()
    work = 0
    while time.perf_counter() - t0 < inp.get("job_s", 0.0):     # wall time of CPU work
        sum(range(1000))
        work += 1
    out = {"started": started, "work": work}
    if inp.get("crash"):
        os._exit(3)
    if inp.get("refresh"):
        out["refresh_worker"] = True
    return out


worker.start({"handler": handler})
