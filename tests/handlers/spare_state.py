"""A module with state a fresh child must not carry: a call count, the RNG's next draw,
a file read at import, whether start()'s warmup ran before the first job."""
import os
import random
import time

import worker

CALLS = 0
WARMED = False
RNG = random.Random(1234)      # seeded at import: a fresh child's first draw is known
CONFIG_FILE = "config.txt"     # in the working directory the child starts in
CONFIG = open(CONFIG_FILE).read() if os.path.exists(CONFIG_FILE) else None
time.sleep(float(os.environ.get("SPARE_SETUP_S", "0")))      # a model load, standing in


def warmup():
    global WARMED
    if os.path.exists("warmup-fails"):
        raise RuntimeError("warm-up failed on purpose")
    WARMED = True


def handler(job):
    global CALLS
    CALLS += 1
    inp = job["input"]
    out = {"pid": os.getpid(), "calls": CALLS, "draw": RNG.random(), "warmed": WARMED,
           "config": CONFIG}
    if inp.get("write") is not None:          # new weights/config on disk, then a refresh
        with open(CONFIG_FILE, "w") as f:
            f.write(inp["write"])
    if inp.get("refresh"):
        out["refresh_worker"] = inp["refresh"]
    if inp.get("exit"):
        os._exit(inp["exit"])
    return out


worker.start({"handler": handler, "warmup": warmup})
