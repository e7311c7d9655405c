"""Writes its job's Done frame itself, as a hostile handler could, with a result the
parent can decode but not encode again: a lone surrogate (JSON's escape for it)."""
import os
import struct

import worker
from worker.child import runtime


def handler(job):
    if not job["input"].get("lie"):
        return "ok"
    run = runtime._current._runs[job["id"]]
    payload = ('["done",%d,"COMPLETED","completed",{"output":"\\ud800"},false,1]' % run).encode()
    os.write(runtime._current.fd, struct.pack("!I", len(payload)) + payload)
    return "after the lie"


worker.start({"handler": handler})
