"""An existing RunPod worker, unchanged: it imports the official SDK."""
import os

import runpod


def handler(job):
    runpod.serverless.progress_update(job, "halfway")
    return {"pid": os.getpid(), "prompt": job["input"].get("prompt")}


runpod.serverless.start({"handler": handler})
