"""A handler for the boundary tests, in the mode its argv names: inline (default), threads
(a concurrency_modifier) or tasks (async). job["input"]["do"] picks the behaviour."""
import asyncio
import ctypes
import os
import sys
import time

import worker

MODE = sys.argv[1] if len(sys.argv) > 1 else "inline"


def nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def act(job):
    inp = job["input"]
    do = inp.get("do", "echo")
    if do == "echo":
        return {"echo": inp.get("echo"), "pid": os.getpid()}
    if do == "nest":                 # an output of lists nested `depth` levels deep
        return nested(inp["depth"])
    if do == "value":                # a value JSON cannot carry as it is
        return {"nan": float("nan"), "big": 10 ** 5000,
                "surrogate": "\ud800", "bytes": b"x"}[inp["kind"]]
    if do == "sleep":                # a C-level sleep: an interruption waits for its end
        time.sleep(inp["seconds"])
        return {"slept": inp["seconds"], "tag": inp.get("tag")}
    if do == "segfault":
        time.sleep(inp.get("after", 0))
        ctypes.string_at(0)
    if do == "print":                # lines from the job's own code, the last one unfinished
        for i in range(inp.get("n", 3)):
            print(f"{job['id']} line {i}")
            time.sleep(inp.get("gap", 0))
        sys.stdout.write(f"{job['id']} partial")
        return "printed"
    if do == "progress":
        for i in range(inp["n"]):
            worker.progress_update(job, {"i": i})
        return {"progressed": inp["n"]}
    if do == "environ":
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
        from worker.child import runtime
        return {"proc": [n for n in inp["names"] if f"{n}=".encode() in raw],
                "os": [n for n in inp["names"] if n in os.environ],
                "api_token": runtime.current().settings.api_token}
    raise AssertionError(f"unknown action {do!r}")


def handler(job):
    return act(job)


async def async_handler(job):
    if job["input"].get("do") == "sleep":
        await asyncio.sleep(job["input"]["seconds"])
        return {"slept": job["input"]["seconds"], "tag": job["input"].get("tag")}
    return act(job)


if MODE == "tasks":
    worker.start({"handler": async_handler, "concurrency_modifier": lambda n: 4})
elif MODE == "threads":
    worker.start({"handler": handler, "concurrency_modifier": lambda n: 4})
else:
    worker.start({"handler": handler})
