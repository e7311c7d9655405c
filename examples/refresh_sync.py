"""refresh_worker from a sync handler: after this job's result is reported the worker
process is replaced by a fresh one (module state is new)."""
import os

import worker as runpod

LOADED_IN = os.getpid()   # stands for a model loaded at import


def sync_handler(job):
    results = [f"Generated sync token output {i}" for i in range(job["input"].get("count", 3))]
    return {"refresh_worker": True, "job_results": results, "pid": LOADED_IN}


runpod.serverless.start({"handler": sync_handler, "return_aggregate_stream": True})
