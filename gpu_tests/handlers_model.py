"""The tiny model (tiny_model.py) loaded once per child at import, on the GPU when there is
one, and warmed (one forward pass: the kernels load) before the child reports Ready."""
import os
import sys

import torch

import worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = tiny_model.build(DEVICE)


def handler(job):
    vector = tiny_model.embed(MODEL, str(job["input"].get("text", "")), DEVICE)
    return {"pid": os.getpid(), "device": DEVICE, "first": [round(v, 5) for v in vector[:4]],
            "norm": round(sum(v * v for v in vector) ** 0.5, 4)}


def warmup():
    tiny_model.embed(MODEL, "warm up", DEVICE)


worker.start({"handler": handler, "warmup": warmup})
