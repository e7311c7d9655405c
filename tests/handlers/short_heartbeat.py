"""Sets the heartbeat timeout in its start() dict (HEARTBEAT_TIMEOUT), then runs a job
longer than it."""
import os
import time

import worker


def handler(job):
    time.sleep(job["input"].get("seconds", 2))
    return {"slept": True}


worker.start({"handler": handler, "heartbeat_timeout": float(os.environ["HEARTBEAT_TIMEOUT"])})
