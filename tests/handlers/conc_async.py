"""Records when each job ran, to show jobs overlapping in one worker process."""
import asyncio
import os
import time

import worker


async def handler(job):
    start = time.monotonic()
    await asyncio.sleep(job["input"].get("delay", 0.3))
    return {"start": start, "end": time.monotonic(), "pid": os.getpid()}


worker.start({"handler": handler, "concurrency_modifier": lambda current: 4})
