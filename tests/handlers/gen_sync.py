import time

import worker


def handler(job):
    inp = job["input"]
    for i in range(inp.get("n", 3)):
        if inp.get("fail_at") == i:
            raise RuntimeError(f"failed at chunk {i}")
        if inp.get("error_at") == i:
            yield {"error": f"chunk error at {i}"}
        if inp.get("refresh_at") == i:
            yield {"refresh_worker": True, "i": i}
            continue
        yield {"i": i, "pad": "x" * inp["pad"]} if inp.get("pad") else {"i": i}
        time.sleep(inp.get("delay", 0))


worker.start({"handler": handler})
