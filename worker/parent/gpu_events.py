"""What an Xid or ECC event from NVML means for the children (a pure rule, used by the core).

NVML's events name no process. An application Xid (the CUDA context of some process is
poisoned, the GPU is fine) is put on the children that could have caused it: the ones
running a job, or that have run one, and are not already being replaced (the Xid of a
fault whose job already failed with a sticky error must not replace the fresh child too).
Xids 63 and 92 are recorded by the driver, nothing to do. Any other Xid, a double-bit
ECC error or a lost GPU means the GPU itself is unhealthy.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from .monitor import XidClass, classify_xid

log = logging.getLogger("worker")


class GpuAction(enum.Enum):
    NOTED = "noted"
    REPLACE = "replace"          # the busy children are replaced once idle
    IGNORED = "ignored"          # an application Xid that replaces nothing (see `why`)
    UNHEALTHY = "unhealthy"      # no more jobs: the platform should replace this worker


@dataclass(frozen=True)
class GpuJudgement:
    label: str                   # "Xid 43", "double-bit ECC error"...
    action: GpuAction
    busy: tuple = ()             # the children to replace once idle
    why: str = ""                # why an application Xid replaces nothing

    @property
    def shown(self) -> str:
        """As /health lists it."""
        return f"ignored: {self.why}" if self.action is GpuAction.IGNORED \
            else self.action.value

    @property
    def application(self) -> bool:
        """An application Xid: a spare's context may be the poisoned one."""
        return self.action is GpuAction.REPLACE or self.action is GpuAction.IGNORED


def judge(xid: int, what: str, slots: list) -> GpuJudgement:
    """`xid` is -1 for an event without one (then `what` names it)."""
    kind = classify_xid(xid) if xid >= 0 else XidClass.UNHEALTHY
    label = f"Xid {xid}" if xid >= 0 else what
    if kind is XidClass.NOTE:
        log.info("GPU reported %s: recorded by the driver, nothing to do", label)
        return GpuJudgement(label, GpuAction.NOTED)
    if kind is not XidClass.REPLACE:
        return GpuJudgement(label, GpuAction.UNHEALTHY)
    live = [s.child for s in slots if s.child is not None
            and s.child.refresh_reason is None and not s.child.stop_cause]
    busy = tuple(c for c in live if c.jobs_run or c.jobs)
    if busy:
        log.warning("GPU reported application %s: the CUDA context of worker process %s is "
                    "poisoned; replacing it after the running job", label,
                    ", ".join(str(c.pid) for c in busy))
        return GpuJudgement(label, GpuAction.REPLACE, busy)
    why = "the worker process is already being replaced" if not live \
        else "it belongs to a worker process already replaced"
    log.info("GPU reported application %s, %s", label, why)
    return GpuJudgement(label, GpuAction.IGNORED, why=why)
