"""Sleeps 200 ms per job (a stand-in for a model's forward pass that holds its device)."""
import os
import time

import runpod


def handler(job):
    time.sleep(0.2)
    return {"child": os.environ.get("WORKER_CHILD_INDEX"), "i": job["input"]["i"]}


runpod.serverless.start({"handler": handler})
