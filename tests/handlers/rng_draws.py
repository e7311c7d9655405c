"""Draws from the global generators a model stack uses; seeds them at import when the
working directory holds `seed-at-import` (as a module that wants reproducible runs
would), and asks for a fresh child after every job."""
import os
import random

import numpy as np
import torch

import worker

if os.path.exists("seed-at-import"):
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)


def handler(job):
    return {"pid": os.getpid(), "torch": torch.rand(1).item(), "numpy": float(np.random.rand()),
            "random": random.random(), "refresh_worker": True}


worker.start({"handler": handler})
