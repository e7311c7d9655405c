"""Which GPUs each child gets: WORKER_GPUS_PER_CHILD and WORKER_CHILDREN over the GPUs the
worker may use. Pure, but for `visible_gpus`, which asks NVML once at start.

A child's devices are CUDA_VISIBLE_DEVICES entries: NVML's UUIDs when NVML answers (they
name a device whatever order CUDA would enumerate in), else the parent's own entries.
"""
from __future__ import annotations

import logging

from ..gpus import tokens, visible_devices

log = logging.getLogger("worker")


def visible_gpus(visible: str | None, probe=None) -> list[str]:
    """The GPUs this worker may use, as CUDA_VISIBLE_DEVICES entries; [] when there are
    none (no NVML and no CUDA_VISIBLE_DEVICES list). An NVML probe already knows them (one
    NVML start, not two: it can take a second on a machine without the persistence
    daemon)."""
    if getattr(probe, "uuids", None) is not None:
        return list(probe.uuids)
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:       # no library, no driver: the variable is all we know
        return [str(t) for t in tokens(visible) or ()]
    try:
        return [uuid for _, _, uuid in visible_devices(pynvml, visible).handles]
    except Exception as exc:   # noqa: BLE001 - NVML answered at init and failed later
        log.warning("could not list the GPUs through NVML (%s); using CUDA_VISIBLE_DEVICES",
                    exc)
        return [str(t) for t in tokens(visible) or ()]
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def plan(gpus: list[str], per_child: int | None, children: int | None) -> list[tuple]:
    """Each child's devices, one tuple per child; () means the child keeps the parent's
    CUDA_VISIBLE_DEVICES (there is no GPU to divide).

    - no GPU: `children` children (default 1), all on the CPU;
    - per_child 0: `children` children (default 1), each with every GPU;
    - otherwise slices of `per_child` GPUs (default: the GPUs divided evenly among
      `children`, else 1), one child per slice; with `children` set as well, children
      take the slices in turn (two children on one GPU share it).
    """
    if not gpus:
        return [()] * (children or 1)
    if per_child == 0:
        return [tuple(gpus)] * (children or 1)
    if per_child is None:
        per_child = max(1, len(gpus) // children) if children else 1
    if per_child > len(gpus):
        log.warning("WORKER_GPUS_PER_CHILD=%d but %d GPU(s) are visible: one child gets "
                    "them all", per_child, len(gpus))
        per_child = len(gpus)
    slices = [tuple(gpus[i * per_child:(i + 1) * per_child])
              for i in range(len(gpus) // per_child)]
    count = children or len(slices)
    used = {d for i in range(count) for d in slices[i % len(slices)]}
    idle = [g for g in gpus if g not in used]
    if idle:
        log.warning("%d GPU(s) used by no child: %s (WORKER_CHILDREN=%d, "
                    "WORKER_GPUS_PER_CHILD=%d)", len(idle), ", ".join(idle), count, per_child)
    return [slices[i % len(slices)] for i in range(count)]


def shared(devices: list[tuple]) -> list[bool]:
    """For each child: does another child use one of its GPUs? (Then the device's memory in
    use is not its own, and only its own allocator's figure measures it.)"""
    out = []
    for i, mine in enumerate(devices):
        others = {d for j, theirs in enumerate(devices) if j != i for d in theirs}
        out.append(bool(set(mine) & others))
    return out
