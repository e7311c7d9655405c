"""A module for WORKER_PRELOAD that asks torch about CUDA at import, as many libraries do
(a `device = "cuda" if torch.cuda.is_available() else "cpu"` at module level)."""
import os

import torch

NVML_CHECK = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")   # what the forkserver had
AVAILABLE = torch.cuda.is_available()
