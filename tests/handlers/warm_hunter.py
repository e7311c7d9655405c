"""With WORKER_WARM_REFRESH the forkserver imports this module: its top level hunts every
/proc/<pid>/environ for values that start with HUNTED (the tests' secrets) as a hostile
module would, and notes who it ran as. The handler reports what the import found."""
import os

import worker

HUNTED = b"hunted-secret-"


def hunt():
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if HUNTED in f.read():
                        found.append(pid)
            except OSError:
                pass
    return found


def caps():
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f)
                if k.startswith("Cap")}


AT_IMPORT = {"found": hunt(), "uid": os.getuid(), "pid": os.getpid(), "caps": caps()}


def handler(job):
    return {**AT_IMPORT, "warm": AT_IMPORT["pid"] != os.getpid(), "found_now": hunt()}


worker.start({"handler": handler})
