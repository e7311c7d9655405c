"""A handler that loads 'weights' at import (slowly) and records what its import did, for
the warm refresh tests: each child must see the import's state, never a used one."""
import atexit
import os
import sys
import time

import worker

IMPORT_PID = os.getpid()
IMPORTED_AT = time.time()
time.sleep(float(os.environ.get("WARM_TEST_LOAD_S", "0.5")))     # loading the weights
WEIGHTS = list(range(1000))
STATE = {"jobs": 0}
if os.environ.get("WARM_TEST_EXIT_FILE"):
    atexit.register(lambda: open(os.environ["WARM_TEST_EXIT_FILE"], "a").write(
        f"{os.getpid()}\n"))
do = sys.argv[1] if len(sys.argv) > 1 else ""
if do in ("thread", "thread-nondaemon"):
    import threading
    threading.Thread(target=time.sleep, args=(60,), daemon=do == "thread", name="loader").start()
elif do == "process":
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
elif do == "cuda":                  # stands in for weights moved to the GPU at import
    import torch
    torch.cuda.is_initialized = lambda: True
elif do == "raise":
    raise RuntimeError("the weights are missing")


def handler(job):
    STATE["jobs"] += 1
    inp = job["input"]
    return {"pid": os.getpid(), "import_pid": IMPORT_PID, "imported_at": IMPORTED_AT,
            "jobs_in_this_child": STATE["jobs"], "sum": sum(WEIGHTS),
            "refresh_worker": bool(inp.get("refresh"))}


worker.start({"handler": handler})
print("after start()", file=sys.stderr)
