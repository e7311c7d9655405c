"""Fitness checks, sync and async, registered with the SDK's decorator (`import runpod`)
or ours (`ours`); `fail-sync` / `fail-async` in argv makes that one fail."""
import asyncio
import sys

if "ours" in sys.argv[1:]:
    import worker as runpod
else:
    import runpod


@runpod.serverless.register_fitness_check
def disk_has_model():
    print("check: disk_has_model ran", flush=True)
    if "fail-sync" in sys.argv[1:]:
        raise RuntimeError("model file not found")


@runpod.serverless.register_fitness_check
async def backend_answers():
    await asyncio.sleep(0)
    print("check: backend_answers ran", flush=True)
    if "fail-async" in sys.argv[1:]:
        raise ConnectionError("backend did not answer")


def handler(job):
    return "fit"


runpod.serverless.start({"handler": handler})
