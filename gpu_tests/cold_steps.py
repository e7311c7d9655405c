"""A cold GPU child's steps, timed one by one in a fresh interpreter (as a child without
WORKER_PRELOAD pays them): torch import, CUDA context, the tiny model built on the CPU,
moved to the device, and its first forward pass (the first kernels load: lazy loading).
Prints one JSON object of milliseconds. bench/bench_gpu.py runs it."""
import json
import os
import sys
import time

marks = [("start", time.perf_counter())]


def mark(name: str) -> None:
    marks.append((name, time.perf_counter()))


import torch  # noqa: E402

mark("torch import")
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
mark("CUDA context")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402

model = tiny_model.build("cpu")
mark("model build (CPU)")
model = model.to("cuda")
torch.cuda.synchronize()
mark("move to device")
tiny_model.embed(model, "a cat", "cuda")
torch.cuda.synchronize()
mark("first forward (kernels load)")
tiny_model.embed(model, "a cat", "cuda")
torch.cuda.synchronize()
mark("second forward")
print(json.dumps({name: round((t - marks[i][1]) * 1000, 1)
                  for i, (name, t) in enumerate(marks[1:])}))
