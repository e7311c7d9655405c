"""The SDK's `runpod.serverless.modules.rp_logger` path."""
from ..logger import LOG_LEVELS, RunPodLogger

__all__ = ["RunPodLogger", "LOG_LEVELS"]
