"""Allocates on the GPU in the child; reports what it sees."""
import os

import torch

import worker

DEVICE = torch.device("cuda")
WEIGHTS = torch.ones((1024, 1024), device=DEVICE)   # "the model", loaded once per child


def handler(job):
    x = torch.full((1024,), float(job["input"].get("x", 1)), device=DEVICE)
    return {"pid": os.getpid(), "sum": float((WEIGHTS @ x).sum().item()),
            "device": torch.cuda.get_device_name(0)}


worker.start({"handler": handler})
