"""Uses the GPU in the child; misbehaves on request (leak, OOM, device-side assert)."""
import os

import torch

import worker

DEVICE = torch.device("cuda")
WEIGHTS = torch.ones((1024, 1024), device=DEVICE)   # "the model", loaded once per child
HELD = []


def handler(job):
    inp = job["input"]
    do = inp.get("do", "ok")
    if do == "leak":                 # keeps VRAM between jobs, like a cache that grows
        HELD.append(torch.empty(int(inp["mb"]) * 2**20, dtype=torch.uint8, device=DEVICE))
    elif do == "oom":
        torch.empty(10**15, dtype=torch.uint8, device=DEVICE)
    elif do == "assert":             # an out-of-bounds index: a sticky device-side assert
        x = torch.zeros(10, device=DEVICE)
        x[torch.tensor([10**6], device=DEVICE)] = 1.0
        torch.cuda.synchronize()
    x = torch.full((1024,), float(inp.get("x", 1)), device=DEVICE)
    return {"pid": os.getpid(), "sum": float((WEIGHTS @ x).sum().item()),
            "device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "child": os.environ.get("WORKER_CHILD_INDEX")}


def warmup():                        # the kernels the jobs use load before Ready
    float((WEIGHTS @ torch.ones(1024, device=DEVICE)).sum().item())


worker.start({"handler": handler, "warmup": warmup})
