import asyncio

import worker


async def handler(job):
    inp = job["input"]
    for i in range(inp.get("n", 3)):
        if inp.get("fail_at") == i:
            raise RuntimeError(f"failed at chunk {i}")
        await asyncio.sleep(0)
        yield {"i": i}


worker.start({"handler": handler})
