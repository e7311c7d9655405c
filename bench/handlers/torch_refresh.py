"""Imports torch at module level, like a model handler; refreshes when asked."""
import torch

import worker


def handler(job):
    return {"refresh_worker": bool(job["input"].get("refresh")), "torch": torch.__version__}


worker.start({"handler": handler})
