"""The soak's handler: one generator, so every job can stream, and the job's input says
what it does. Each run appends "<token> <job id> <pid>" to $SOAK_RUNS before it does
anything (runs are counted, not only results), and each child appends its pid to
$SOAK_CHILDREN at import (the soak tells a handler's child from the forkserver by it).
Every chunk carries the job's token, so a result handed to the wrong job is seen."""
import os
import time

import worker

with open(os.environ["SOAK_CHILDREN"], "a") as _f:
    _f.write(f"{os.getpid()}\n")


def handler(job):
    inp = job["input"]
    token, kind = inp["token"], inp["kind"]
    with open(os.environ["SOAK_RUNS"], "a") as f:
        f.write(f"{token} {job['id']} {os.getpid()}\n")
    time.sleep(inp.get("ms", 0) / 1000)
    if kind == "fail":
        raise ValueError(f"the soak's failing job {token}")
    if kind == "crash":
        os._exit(3)
    if kind == "timeout":            # past its policy.executionTimeout
        time.sleep(30)
    if kind == "stream":
        for i in range(3):
            yield {"token": token, "i": i}
        return
    if kind == "refresh":
        yield {"token": token, "refresh_worker": True}
        return
    yield {"token": token}


worker.start({"handler": handler, "return_aggregate_stream": True})
