import worker


async def handler(job):
    return job["input"]


worker.start({"handler": handler})
