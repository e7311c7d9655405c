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


def _first_to_warm_up() -> bool:
    """The first child to get here (the active one: a spare starts after it is ready)."""
    try:
        os.close(os.open("first-warmed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def warmup():
    global WARMED
    if os.path.exists("warmup-fails"):
        raise RuntimeError("warm-up failed on purpose")
    if os.path.exists("spare-speaks") and not _first_to_warm_up():
        while not os.path.exists("job-running"):     # the spare, during the first job
            time.sleep(0.01)
        print(f"spare {os.getpid()} warming up", flush=True)
        open("spare-spoke", "w").close()
    WARMED = True


def handler(job):
    global CALLS
    CALLS += 1
    inp = job["input"]
    out = {"pid": os.getpid(), "calls": CALLS, "draw": RNG.random(), "warmed": WARMED,
           "config": CONFIG}
    if inp.get("wait_for_spare"):            # hold the job until the spare has spoken
        open("job-running", "w").close()
        while not os.path.exists("spare-spoke"):
            time.sleep(0.01)
    if inp.get("write") is not None:          # new weights/config on disk, then a refresh
        with open(CONFIG_FILE, "w") as f:
            f.write(inp["write"])
    if inp.get("refresh"):
        out["refresh_worker"] = inp["refresh"]
    if inp.get("exit"):
        os._exit(inp["exit"])
    return out


worker.start({"handler": handler, "warmup": warmup})
