"""Written for the official SDK: imports torch like a model handler, and asks for a fresh
worker after every job (bench_perf.py's refresh-through-the-queue row)."""
import runpod
import torch


def handler(job):
    return {"refresh_worker": True, "torch": torch.__version__, "i": job["input"].get("i")}


runpod.serverless.start({"handler": handler})
