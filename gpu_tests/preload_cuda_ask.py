"""A module for WORKER_PRELOAD that asks torch whether CUDA is available at import."""
import torch

AVAILABLE = torch.cuda.is_available()
