"""What the parent knows about memory: the GPU through NVML, the host through psutil/cgroup.

NVML creates no CUDA context, so the parent may use it. One probe is chosen at start:
NvmlProbe when NVML loads and sees a device, else HostProbe, with one log line saying
why. Both answer the same `read(child_pid)`, so policies (and their tests) do not care
which one is behind it; a test can hand the supervisor any object with that method.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Callable

log = logging.getLogger("worker.monitor")

# NVIDIA's device plugin treats these as application errors: the GPU is fine, the process
# that caused them is not (its CUDA context is poisoned).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


@dataclass
class DeviceReading:
    index: int
    uuid: str
    name: str
    total_mb: float
    used_mb: float
    free_mb: float
    util_pct: float | None = None
    temp_c: float | None = None
    power_w: float | None = None


@dataclass
class Reading:
    probe: str                               # "nvml" or "host"
    child_rss_mb: float = 0.0                # the child's process tree
    cgroup_mb: float | None = None           # memory.current of our cgroup (v2)
    cgroup_limit_mb: float | None = None
    oom_kills: int | None = None             # memory.events oom_kill
    devices: list = field(default_factory=list)

    @property
    def device_used_mb(self) -> float:
        return sum(d.used_mb for d in self.devices)

    @property
    def device_total_mb(self) -> float:
        return sum(d.total_mb for d in self.devices)

    def to_dict(self) -> dict:
        return asdict(self)


class HostProbe:
    """No GPU (or NVML refuses): the child's resident memory and the cgroup's."""
    name = "host"

    def __init__(self, cgroup_root: str = "/sys/fs/cgroup"):
        self.cgroup_root = cgroup_root

    def read(self, child_pid: int | None = None) -> Reading:
        reading = Reading(self.name)
        if child_pid:
            reading.child_rss_mb = rss_of_tree(child_pid) / 2**20
        reading.cgroup_mb = _mb(_read_int(os.path.join(self.cgroup_root, "memory.current")))
        reading.cgroup_limit_mb = _mb(_read_int(os.path.join(self.cgroup_root, "memory.max")))
        events = _read_kv(os.path.join(self.cgroup_root, "memory.events"))
        reading.oom_kills = events.get("oom_kill")
        return reading

    def close(self) -> None:
        pass


class NvmlProbe(HostProbe):
    """Device-level truth for the GPUs the child may use, mapped by UUID."""
    name = "nvml"

    def __init__(self, visible: str | None = None, cgroup_root: str = "/sys/fs/cgroup"):
        super().__init__(cgroup_root)
        import pynvml
        self.nvml = pynvml
        pynvml.nvmlInit()
        try:
            self.handles = _visible_handles(pynvml, visible)
        except Exception:
            pynvml.nvmlShutdown()
            raise
        if not self.handles:
            pynvml.nvmlShutdown()
            raise RuntimeError("NVML sees no GPU that CUDA_VISIBLE_DEVICES allows")

    def read(self, child_pid: int | None = None) -> Reading:
        reading = super().read(child_pid)
        reading.probe = self.name
        for index, handle in self.handles:
            reading.devices.append(self._device(index, handle))
        return reading

    def _device(self, index: int, handle) -> DeviceReading:
        n = self.nvml
        mem = n.nvmlDeviceGetMemoryInfo(handle)
        dev = DeviceReading(index, _text(n.nvmlDeviceGetUUID(handle)),
                            _text(n.nvmlDeviceGetName(handle)), mem.total / 2**20,
                            mem.used / 2**20, mem.free / 2**20)
        dev.util_pct = _quiet(lambda: float(n.nvmlDeviceGetUtilizationRates(handle).gpu))
        dev.temp_c = _quiet(lambda: float(n.nvmlDeviceGetTemperature(handle,
                                                                     n.NVML_TEMPERATURE_GPU)))
        dev.power_w = _quiet(lambda: n.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        return dev

    def watch_xids(self, on_xid: Callable[[int, str], None], stop: threading.Event) -> bool:
        """Start a thread waiting on NVML Xid/ECC events; False if the driver refuses."""
        n = self.nvml
        try:
            event_set = n.nvmlEventSetCreate()
            wanted = n.nvmlEventTypeXidCriticalError | n.nvmlEventTypeDoubleBitEccError
            registered = 0
            for _, handle in self.handles:
                mask = wanted & n.nvmlDeviceGetSupportedEventTypes(handle)
                if mask:
                    n.nvmlDeviceRegisterEvents(handle, mask, event_set)
                    registered += 1
            if not registered:
                n.nvmlEventSetFree(event_set)
                return False
        except n.NVMLError as exc:
            log.info("NVML events unavailable (%s): Xid watching off", exc)
            return False

        def run():
            while not stop.is_set():
                try:
                    data = n.nvmlEventSetWait_v2(event_set, 5000)
                except n.NVMLError as exc:
                    if getattr(exc, "value", None) == n.NVML_ERROR_TIMEOUT:
                        continue
                    log.warning("NVML event wait failed: %s", exc)
                    stop.wait(5)
                    continue
                if data.eventType == n.nvmlEventTypeXidCriticalError:
                    on_xid(int(data.eventData), "xid")
                else:
                    on_xid(-1, "double-bit ECC error")
            n.nvmlEventSetFree(event_set)

        threading.Thread(target=run, name="gpu-worker-xid", daemon=True).start()
        return True

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


def make_probe(visible: str | None = None) -> HostProbe:
    """NVML if it works here, else the host probe, saying why once."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        probe = NvmlProbe(visible)
    except Exception as exc:  # library missing, no driver, no device, permission...
        log.info("no GPU monitoring (%s: %s); watching host memory only",
                 type(exc).__name__, exc)
        return HostProbe()
    names = ", ".join(f"{i}:{_text(probe.nvml.nvmlDeviceGetName(h))}" for i, h in probe.handles)
    log.info("GPU monitoring through NVML: %s", names)
    return probe


def classify_xid(xid: int) -> str:
    """'replace' (the child's context is poisoned) or 'unhealthy' (the GPU is not fine)."""
    return "replace" if xid in APPLICATION_XIDS else "unhealthy"


def _visible_handles(nvml, visible: str | None) -> list:
    """(CUDA index, NVML handle) for each device CUDA_VISIBLE_DEVICES allows. NVML ignores
    that variable, so map by UUID (or by index, when it lists indices)."""
    count = nvml.nvmlDeviceGetCount()
    all_handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    if visible is None or visible.strip() in ("", "all"):
        return list(enumerate(all_handles))
    if visible.strip() in ("none", "void", "-1"):
        return []
    by_uuid = {_text(nvml.nvmlDeviceGetUUID(h)): h for h in all_handles}
    out = []
    for cuda_index, item in enumerate(x.strip() for x in visible.split(",")):
        if item.isdigit():
            if int(item) >= count:
                break            # CUDA stops at the first invalid entry
            out.append((cuda_index, all_handles[int(item)]))
        else:
            match = [h for u, h in by_uuid.items() if u == item or u.startswith(item)]
            if not match:
                break
            out.append((cuda_index, match[0]))
    return out


def rss_of_tree(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    import psutil
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _quiet(fn):
    try:
        return fn()
    except Exception:
        return None


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _read_kv(path: str) -> dict:
    try:
        with open(path) as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    except (OSError, ValueError):
        return {}
