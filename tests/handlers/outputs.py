"""Outputs of a chosen size (issue 36): a result of `result` bytes, `progress` updates of
`size` bytes each, then the result."""
import time

import worker


def handler(job):
    inp = job["input"]
    for i in range(inp.get("progress", 0)):
        worker.progress_update(job, "p" * inp.get("size", 10) + str(i))
    if inp.get("last"):
        worker.progress_update(job, inp["last"])
        time.sleep(inp.get("hold", 0))
    return ("\U0001F600" if inp.get("emoji") else "x") * inp.get("result", 1)   # 4 or 1 byte


worker.start({"handler": handler})
