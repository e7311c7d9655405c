"""A module for WORKER_PRELOAD that initialises CUDA at import: the forkserver then holds
CUDA state, and no child forked from it can use CUDA."""
import torch

torch.cuda.init()
