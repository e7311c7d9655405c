"""One handler, many ways to misbehave, chosen by job["input"]["do"]."""
import ctypes
import os
import signal
import subprocess
import sys
import time

import worker

CALLS = 0          # module state: must be new after a refresh
HELD = []          # memory kept across jobs


def handler(job):
    global CALLS
    CALLS += 1
    inp = job["input"]
    do = inp.get("do", "ok")
    if do == "ok":
        return {"pid": os.getpid(), "calls": CALLS, "echo": inp.get("echo")}
    if do == "raise":
        raise ValueError("bad things happened")
    if do == "sys_exit":
        sys.exit(3)
    if do == "os_exit":
        os._exit(7)
    if do == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if do == "segfault":
        ctypes.string_at(0)
    if do == "not_json":
        return {"a set": {1, 2, 3}}
    if do == "sleep":
        time.sleep(inp.get("seconds", 60))
        return "slept"
    if do == "sleep_with_grandchild":
        child = subprocess.Popen(["sleep", "300"])
        with open(inp["pidfile"], "w") as f:
            f.write(str(child.pid))
        time.sleep(60)
    if do == "swallow":          # ignores every interruption, even SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except BaseException:
                pass
        return "survived"
    if do == "hold_gil":         # a C call that never releases the GIL: heartbeats stop
        ctypes.PyDLL(None).sleep(60)
    if do == "grow":
        HELD.append(bytearray(inp["mb"] * 2**20))
        HELD[-1][::4096] = b"x" * len(HELD[-1][::4096])
        return {"pid": os.getpid()}
    if do == "print":
        print("from print")
        sys.stdout.flush()
        os.write(1, b"from fd 1\n")
        ctypes.CDLL(None).puts(b"from C puts")
        ctypes.CDLL(None).fflush(None)
        print("to stderr", file=sys.stderr)
        subprocess.run(["echo", "from a subprocess"], check=True)
        return "printed"
    if do == "refresh":
        return {"refresh_worker": True, "pid": os.getpid(), "calls": CALLS}
    if do == "error_key":
        return {"error": "custom failure", "partial": 1}
    if do == "empty":
        return {}
    if do == "progress":
        for i in range(inp.get("n", 3)):
            worker.progress_update(job, {"step": i})
        return "progressed"
    if do == "progress_sleep":
        worker.progress_update(job, {"stage": "halfway"})
        time.sleep(inp.get("seconds", 60))
        return "slept"
    if do == "cuda_error":   # what torch raises after a kernel fault
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    if do == "cuda_oom":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if do == "env":
        return {name: name in os.environ for name in inp["names"]}
    if do == "argv":
        return sys.argv[1:]
    if do == "trace":            # the trace context the job came with, and a line under it
        print("traced line")
        return {"traceparent": job.get("traceparent")}
    if do == "bar":              # a progress bar drawn with carriage returns, as tqdm does
        for i in range(0, 101, 10):
            print(f"\rjob bar {i}%", end="", flush=True)
        print()
        return "drawn"
    raise AssertionError(f"unknown action {do!r}")


worker.start({"handler": handler})
