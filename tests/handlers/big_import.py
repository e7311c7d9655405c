"""Holds 300 MiB from import time, like a model; reports its supervisor's memory."""
import psutil

import worker

MODEL = bytearray(300 * 2**20)
MODEL[::4096] = b"x" * len(MODEL[::4096])


def handler(job):
    me = psutil.Process()
    # the supervisor is the process that owns this child's forkserver (or this child)
    supervisor = me.parent()
    if supervisor.name().startswith("python") and "forkserver" in " ".join(supervisor.cmdline()):
        supervisor = supervisor.parent()
    return {"child_rss_mb": me.memory_info().rss / 2**20,
            "supervisor_pid": supervisor.pid,
            "supervisor_rss_mb": supervisor.memory_info().rss / 2**20}


worker.start({"handler": handler})
