"""An async generator handler: awaits between tokens, streams each one."""
import asyncio

import worker as runpod


async def async_handler(job):
    for i in range(job["input"].get("count", 5)):
        yield f"Generated async token output {i}"
        await asyncio.sleep(job["input"].get("delay", 0.05))


runpod.serverless.start({"handler": async_handler, "return_aggregate_stream": True})
