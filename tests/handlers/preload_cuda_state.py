"""Stands in, on a machine without CUDA, for a preload that initialised CUDA in the
forkserver (torch.cuda.init() at import): torch's own flag for it says so in every child
forked afterwards. The real case runs in gpu_tests/test_cuda_child.py."""
import torch

torch.cuda._is_in_bad_fork = lambda: True
