"""A model handler for warm refresh: weights built and used once at import (a warm-up
forward pass, which starts torch's thread pool unless the forkserver holds it back)."""
import torch

import worker

torch.manual_seed(0)
WEIGHTS = torch.randn(400, 400)
WARMUP = float((WEIGHTS @ WEIGHTS).sum())        # a parallel op at import time


def handler(job):
    out = WEIGHTS @ WEIGHTS                       # a parallel op in the child
    return {"sum": float(out.sum()), "warmup": WARMUP, "threads": torch.get_num_threads()}


worker.start({"handler": handler})
