"""Leaves a detached process (its own session) that holds what this child holds — the
forkserver's "alive" pipe among them, so the forkserver outlives the worker — and says
where the forkserver listens, which pid the worker has, and the detached one's pid."""
import os
import time

import worker
from forkserver_ask import addresses, worker_pid


def handler(job):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            time.sleep(job["input"].get("hold_s", 120))
        os._exit(0)
    os.close(w)
    holder = int(os.read(r, 32))
    os.close(r)
    return {"worker": worker_pid(), "addresses": addresses(), "holder": holder}


worker.start({"handler": handler})
