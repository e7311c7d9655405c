"""Settings given only to start(): they must reach the parent's every component."""
import os

import worker


def handler(job):
    inp = job["input"]
    if inp.get("big"):
        return {"blob": "x" * 200_000}            # ~200 KB: over 0.01 MiB
    out = {"pid": os.getpid()}
    if inp.get("refresh"):
        out["refresh_worker"] = True
    return out


worker.start({"handler": handler, "max_result_mb": 0.01, "refresh_stops_pod": True})
