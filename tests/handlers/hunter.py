"""Hunts every process's /proc/<pid>/environ and cmdline for the values the job names,
as a hostile handler would; reports what it found where, and its own capabilities."""
import os

import worker


def hunt(values):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if any(v.encode() in data for v in values):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        what = f.read().replace(b"\0", b" ")[:120].decode("utf-8", "replace")
                except OSError:
                    what = "?"
                found.append(f"{pid}/{name}: {what}")
    return found


def caps():
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f)
                if k.startswith("Cap")}


def dumpable():
    import ctypes
    return ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)        # PR_GET_DUMPABLE


def handler(job):
    return {"found": hunt(job["input"]["values"]), "caps": caps(), "pid": os.getpid(),
            "dumpable": dumpable(), "uid": os.getuid()}


worker.start({"handler": handler})
