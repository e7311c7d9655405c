"""A trivial handler written for the official SDK: runs under runpod-python as it is, and
under gpu-worker with `python -m worker` (its start() is redirected)."""
import runpod


def handler(job):
    return {"ok": True}


runpod.serverless.start({"handler": handler})
