"""The handler the Docker tests run inside the image, mounted read-only as a user's own
handler would be. Input: {"do": "echo" | "sleep" | "swallow" | "refresh" | "fail", ...}."""
import os
import signal
import time

import worker as runpod


def handler(job):
    inp = job["input"]
    do = inp.get("do", "echo")
    if do == "sleep":
        time.sleep(float(inp["seconds"]))
        return {"slept": inp["seconds"], "pid": os.getpid()}
    if do == "swallow":                  # ignores every interruption, SIGTERM too
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deadline = time.monotonic() + float(inp["seconds"])
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except BaseException:            # noqa: BLE001 - that is the point
                pass
        return {"survived": True}
    if do == "refresh":
        return {"refresh_worker": True, "pid": os.getpid()}
    if do == "fail":
        raise ValueError("asked to fail")
    return {"echo": inp, "pid": os.getpid(), "uid": os.getuid()}


runpod.serverless.start({"handler": handler})
