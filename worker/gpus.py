"""Which GPUs a process may use: CUDA_VISIBLE_DEVICES read the way CUDA (and torch) read
it, mapped to NVML handles. The parent's monitor and the child's GPU check both use it;
NVML creates no CUDA context, so either side may call it. `nvml` is the pynvml module.

CUDA's rules, which NVML knows nothing about:
- unset: every device; set but empty, or starting with anything that is not a device
  ("all", "none", "-1"): no device;
- indices are read like strtoul ("1gpu" is 1); a negative or out-of-range entry ends the
  list; a list starting with "GPU-" or "MIG-" takes only entries of that kind;
- a UUID may be shortened to a unique prefix; MIG UUIDs name MIG slices, found with
  nvmlDeviceGetHandleByUUID (which also takes them);
- naming one device twice makes the whole list invalid: no device at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Visible:
    handles: list = field(default_factory=list)   # (CUDA index, NVML handle, UUID)
    skipped: list = field(default_factory=list)   # why a visible device is not monitored

    def __bool__(self) -> bool:
        return bool(self.handles)


def tokens(visible: str | None) -> list | None:
    """The entries CUDA takes from CUDA_VISIBLE_DEVICES: ints or UUID strings; None means
    every device, [] none."""
    if visible is None:
        return None
    items = [x.strip() for x in visible.split(",")]
    kind = "GPU-" if items[0].startswith("GPU-") else \
        "MIG-" if items[0].startswith("MIG-") else None
    out: list = []
    for item in items:
        if kind is None:
            value = _strtoul(item)
            if value < 0:
                break
        elif item.startswith(kind):
            value = item
        else:
            break
        if value in out:
            return []
        out.append(value)
    return out


def visible_devices(nvml, visible: str | None) -> Visible:
    """NVML handles for the devices CUDA would show, in CUDA's order. A device NVML refuses
    to describe (no permission, lost) is skipped and said why; the others stay."""
    found = Visible()
    count = nvml.nvmlDeviceGetCount()
    wanted = tokens(visible)
    if wanted is None:
        wanted = list(range(count))
    seen: set = set()
    for item in wanted:
        try:
            if isinstance(item, int):
                if item >= count:
                    break             # CUDA stops at the first device that is not there
                handle = nvml.nvmlDeviceGetHandleByIndex(item)
            else:
                handle = _by_uuid(nvml, item, count)
                if handle is None:
                    break
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            found.skipped.append(f"device {item}: {exc}")
            continue
        if uuid in seen:              # two prefixes of one UUID: CUDA shows nothing
            return Visible(skipped=[f"{visible!r} names {uuid} twice: no device"])
        seen.add(uuid)
        found.handles.append((len(found.handles) + len(found.skipped), handle, uuid))
    return found


def _by_uuid(nvml, item: str, count: int):
    """A full GPU or MIG UUID through NVML's own lookup; else a unique prefix of one."""
    try:
        return nvml.nvmlDeviceGetHandleByUUID(item.encode())
    except nvml.NVMLError:
        pass
    matches = []
    for handle in _all_handles(nvml, count):
        try:
            if _text(nvml.nvmlDeviceGetUUID(handle)).startswith(item):
                matches.append(handle)
        except nvml.NVMLError:
            continue
    return matches[0] if len(matches) == 1 else None


def _all_handles(nvml, count: int):
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError:
            continue
        yield handle
        try:
            slices = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except (nvml.NVMLError, AttributeError):
            continue
        for i in range(slices):
            try:
                yield nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except (nvml.NVMLError, AttributeError):
                continue


def _strtoul(text: str) -> int:
    digits = ""
    for i, ch in enumerate(text):
        if ch.isdigit() or (i == 0 and ch in "+-"):
            digits += ch
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return -1


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
