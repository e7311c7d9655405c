"""`import worker as runpod` then `runpod.serverless.start(...)`: the SDK's spelling."""
from .api import progress_update, start

__all__ = ["start", "progress_update"]
