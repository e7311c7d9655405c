"""The handler the Docker tests run inside the image, mounted read-only as a user's own
handler would be. Input: {"do": "echo" | "sleep" | "refresh" | "fail", ...}."""
import os
import time

import worker as runpod


def handler(job):
    inp = job["input"]
    do = inp.get("do", "echo")
    if do == "sleep":
        time.sleep(float(inp["seconds"]))
        return {"slept": inp["seconds"], "pid": os.getpid()}
    if do == "refresh":
        return {"refresh_worker": True, "pid": os.getpid()}
    if do == "fail":
        raise ValueError("asked to fail")
    return {"echo": inp, "pid": os.getpid(), "uid": os.getuid()}


runpod.serverless.start({"handler": handler})
