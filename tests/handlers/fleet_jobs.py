"""Jobs for the fleet tests. Every run appends "<job id> <pid>" to ./runs.log (the
worker's folder), so a test counts runs, not only final records."""
import os
import signal
import time

import psutil

import worker


def _worker_pid() -> int:
    """The `python -m worker` process above this child (through the forkserver)."""
    for proc in psutil.Process().parents():
        cmd = proc.cmdline()
        if "-m" in cmd and "worker" in cmd:
            return proc.pid
    raise RuntimeError("no worker process above this child")


def handler(job):
    inp = job["input"]
    with open("runs.log", "a") as f:
        f.write(f"{job['id']} {os.getpid()}\n")
    do = inp.get("do", "ok")
    if do == "sleep":
        time.sleep(inp.get("seconds", 1))
    elif do == "progress":
        worker.progress_update(job, {"stage": "halfway"})
        time.sleep(inp.get("seconds", 1))
    elif do == "kill_worker":          # a poison job: it takes its whole worker down
        os.kill(_worker_pid(), signal.SIGKILL)
        time.sleep(60)
    elif do == "env":                  # what of the queue's settings the child can see
        return {"env": sorted(k for k in os.environ if "QUEUE" in k or "REDIS" in k)}
    elif do == "big":
        return "x" * inp["bytes"]
    elif do == "refresh":
        return {"refresh_worker": True, "pid": os.getpid()}
    elif do == "raise":
        raise ValueError("bad input")
    return {"echo": inp.get("echo"), "pid": os.getpid()}


worker.start({"handler": handler})
