"""An async handler awaiting 50 ms, 32 jobs at a time, written for the official SDK."""
import asyncio

import runpod


async def handler(job):
    await asyncio.sleep(0.05)
    return {"ok": True}


runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda current: 32})
