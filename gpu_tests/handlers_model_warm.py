"""The tiny model written for WORKER_WARM_REFRESH: built on the CPU at import (in the
forkserver, shared by every child), moved to the GPU on each child's first job (CUDA
starts in the child, never in the forkserver)."""
import os
import sys

import torch

import worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = tiny_model.build("cpu")
ON_DEVICE = False


def handler(job):
    global ON_DEVICE
    if not ON_DEVICE:
        MODEL.to(DEVICE)
        ON_DEVICE = True
    vector = tiny_model.embed(MODEL, str(job["input"].get("text", "")), DEVICE)
    return {"pid": os.getpid(), "device": DEVICE, "first": [round(v, 5) for v in vector[:4]]}


worker.start({"handler": handler})
