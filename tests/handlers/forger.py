"""Prints what the job asks, through Python (print) and straight to fd 1 (as C code or a
subprocess would): user text that tries to look like the worker's own tags and lines."""
import os

import worker


def handler(job):
    text = job["input"]["text"]
    print(text, flush=True)
    os.write(1, (text + "\n").encode())
    return "printed"


worker.start({"handler": handler})
