"""The tiny model of handlers_model.py written for WORKER_WARM_REFRESH: built on the CPU at
import (in the forkserver, shared by every child), moved to the GPU on each child's first
job (CUDA starts in the child, never in the forkserver)."""
import os

import torch

import worker

torch.manual_seed(0)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VOCAB, WIDTH = 32000, 256
MODEL = torch.nn.ModuleDict({
    "embed": torch.nn.Embedding(VOCAB, WIDTH),
    "encoder": torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(WIDTH, nhead=4, dim_feedforward=1024,
                                         batch_first=True), num_layers=4,
        enable_nested_tensor=False),
}).eval()
ON_DEVICE = False


def handler(job):
    global ON_DEVICE
    if not ON_DEVICE:
        MODEL.to(DEVICE)
        ON_DEVICE = True
    ids = torch.tensor([[ord(c) % VOCAB for c in str(job["input"].get("text", ""))[:512]]
                        or [0]], device=DEVICE)
    with torch.inference_mode():
        vector = MODEL["encoder"](MODEL["embed"](ids)).mean(dim=1)[0].float().cpu().tolist()
    return {"pid": os.getpid(), "device": DEVICE, "first": [round(v, 5) for v in vector[:4]]}


worker.start({"handler": handler})
