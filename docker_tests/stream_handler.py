"""A generator handler for the Docker tests: yields {"i": 0} .. {"i": n-1}, `gap` seconds
apart; its aggregate is the job's output, as runpod-python's return_aggregate_stream."""
import time

import worker as runpod


def handler(job):
    inp = job["input"]
    for i in range(int(inp["n"])):
        time.sleep(float(inp.get("gap", 0)))
        yield {"i": i}


runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
