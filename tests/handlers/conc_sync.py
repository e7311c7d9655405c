"""A sync handler with a concurrency_modifier: jobs run in threads of one process."""
import os
import threading
import time

import worker


def handler(job):
    start = time.monotonic()
    time.sleep(job["input"].get("delay", 0.3))
    return {"start": start, "end": time.monotonic(), "pid": os.getpid(),
            "thread": threading.get_ident()}


worker.start({"handler": handler, "concurrency_modifier": lambda current: 4})
