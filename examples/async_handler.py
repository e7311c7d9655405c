"""An async handler that serves several jobs at once in one worker process:
concurrency_modifier says how many may be in flight."""
import asyncio

import worker as runpod


async def handler(job):
    await asyncio.sleep(job["input"].get("delay", 0.05))
    return {"echo": job["input"].get("prompt")}


def concurrency_modifier(current):
    return 4


runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})
