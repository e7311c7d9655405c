"""An async handler, concurrency 1: cancel and timeout stop its task, not the process."""
import asyncio
import os

import worker


async def handler(job):
    await asyncio.sleep(job["input"].get("delay", 0))
    return {"pid": os.getpid()}


worker.start({"handler": handler})
