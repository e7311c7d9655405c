"""refresh_worker from an async handler."""
import asyncio
import os

import worker as runpod

LOADED_IN = os.getpid()


async def async_handler(job):
    results = []
    for i in range(job["input"].get("count", 3)):
        results.append(f"Generated async token output {i}")
        await asyncio.sleep(0.01)
    return {"refresh_worker": True, "job_results": results, "pid": LOADED_IN}


runpod.serverless.start({"handler": async_handler, "return_aggregate_stream": True})
