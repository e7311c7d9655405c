"""A standard handler: returns its result. Run: python standard.py (reads test_input.json)."""
import time

import worker as runpod


def handler(job):
    job_input = job["input"]
    prompt = job_input.get("prompt")
    time.sleep(job_input.get("seconds", 0))
    return f"echo: {prompt}"


runpod.serverless.start({"handler": handler})
