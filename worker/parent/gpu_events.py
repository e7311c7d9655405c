"""What an Xid or ECC event from NVML means for the children (a pure rule, used by the core).

NVML's events name no process. An application Xid (the CUDA context of some process is
poisoned, the GPU is fine) is put on the children that could have caused it: the ones
running a job, or that have run one, and are not already being replaced (the Xid of a
fault whose job already failed with a sticky error must not replace the fresh child too).
Xids 63 and 92 are recorded by the driver, nothing to do. Any other Xid, a double-bit
ECC error or a lost GPU means the GPU itself is unhealthy.
"""
from __future__ import annotations

import logging

from .monitor import classify_xid

log = logging.getLogger("worker")


def judge(xid: int, what: str, slots: list) -> tuple:
    """(label, action, children to replace once idle). action: "noted", "replace",
    "unhealthy", or "ignored: ..." (why an application Xid replaces nothing)."""
    kind = classify_xid(xid) if what == "xid" else "unhealthy"
    label = f"Xid {xid}" if what == "xid" else what
    if kind == "note":
        log.info("GPU reported %s: recorded by the driver, nothing to do", label)
        return label, "noted", []
    if kind != "replace":
        return label, "unhealthy", []
    live = [s.child for s in slots if s.child is not None
            and s.child.refresh_reason is None and not s.child.stop_cause]
    busy = [c for c in live if c.jobs_run or slots[c.slot].in_flight]
    if not live:
        action = "ignored: the worker process is already being replaced"
    elif not busy:
        action = "ignored: it belongs to a worker process already replaced"
    else:
        log.warning("GPU reported application %s: the CUDA context of worker process %s is "
                    "poisoned; replacing it after the running job", label,
                    ", ".join(str(c.pid) for c in busy))
        return label, "replace", busy
    log.info("GPU reported application %s, %s", label, action[9:])
    return label, action, []
