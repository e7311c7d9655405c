"""Writes a frame header straight onto its control channel, as a hostile handler could:
`announce` bytes announced, `then` bytes of it sent, nothing more."""
import os
import struct

import worker
from worker.child import runtime


def handler(job):
    if not job["input"]["announce"]:
        return "ok"
    fd = runtime._current.fd
    os.write(fd, struct.pack("!I", job["input"]["announce"]) + b"x" * job["input"]["then"])
    return "lied"


worker.start({"handler": handler})
