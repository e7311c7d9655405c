"""For several children: each job says which child ran it and what GPUs that child saw.
argv: --fail-setup-in N makes child N fail at import (its WORKER_CHILD_INDEX)."""
import os
import pathlib
import sys
import time

import worker

if "--fail-setup-in" in sys.argv:
    if os.environ.get("WORKER_CHILD_INDEX") == sys.argv[sys.argv.index("--fail-setup-in") + 1]:
        raise RuntimeError("this child cannot start")

JOBS = 0             # module state: a fresh child starts at 0


def handler(job):
    global JOBS
    JOBS += 1
    inp = job["input"]
    if inp.get("crash"):
        os._exit(3)
    if inp.get("wait"):              # hold the child until the test lets it go
        go = pathlib.Path(inp["wait"])
        while not go.exists():
            time.sleep(0.005)
    if inp.get("sleep"):
        time.sleep(inp["sleep"])
    out = {"pid": os.getpid(), "child": os.environ.get("WORKER_CHILD_INDEX"),
           "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "jobs": JOBS}
    if inp.get("refresh"):
        return {"refresh_worker": True, **out}
    return out


worker.start({"handler": handler})
