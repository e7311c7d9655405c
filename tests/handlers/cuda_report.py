"""Reports what a child sees of CUDA and of the forkserver's preloads."""
import os
import sys

import torch

import worker


def handler(job):
    probe = sys.modules.get("tests.handlers.preload_asks_cuda")
    return {"forkserver_nvml_check": probe and probe.NVML_CHECK,
            "nvml_check_now": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"),
            "bad_fork": torch.cuda._is_in_bad_fork(),
            "available": torch.cuda.is_available(), "pid": os.getpid()}


worker.start({"handler": handler})
