"""What the parent knows about memory: the GPU through NVML, the host through psutil/cgroup.

NVML creates no CUDA context, so the parent may use it. One probe is chosen at start:
NvmlProbe when NVML loads and can read a device the child may use, else HostProbe, with one log line saying
why. Both answer the same `read(child_pid)`, so policies (and their tests) do not care
which one is behind it; a test can hand the supervisor any object with that method.
"""
from __future__ import annotations

import enum
import logging
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from ..gpus import visible_devices

log = logging.getLogger("worker.monitor")

# Xids after which the process that caused them must go but the GPU is fine: the
# application errors NVIDIA's device plugin skips, and 94 (a contained ECC error: NVIDIA's
# Xid catalogue asks only for the application to be restarted).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 94, 109})
# Recorded by the driver with nothing to do: 63 (a page retired or a row remapped) and 92
# (a high single-bit ECC rate, corrected).
NOTE_XIDS = frozenset({63, 92})
XID_WAIT_MS = 500           # how long one NVML wait blocks (a stop is seen within it)
MAX_WAIT_FAILURES = 3       # waits failing in a row, other than timeouts: stop watching


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

    def only(self, devices: tuple) -> "Reading":
        """The reading of these devices alone (a child's CUDA_VISIBLE_DEVICES entries:
        UUIDs or indices); the whole reading when `devices` is empty."""
        if not devices:
            return self
        keep = [d for d in self.devices if d.uuid in devices or str(d.index) in devices]
        return replace(self, devices=keep)


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
    """Device-level truth for the GPUs the child may use (gpus.py maps them). Only devices
    whose memory NVML answers for at start are kept, so a reading never fails on one."""
    name = "nvml"

    def __init__(self, visible: str | None = None, cgroup_root: str = "/sys/fs/cgroup"):
        super().__init__(cgroup_root)
        import pynvml
        self.nvml = pynvml
        self._xid_thread: threading.Thread | None = None
        pynvml.nvmlInit()
        try:
            found = visible_devices(pynvml, visible)
            self.uuids = [uuid for _, _, uuid in found.handles]   # CUDA's order (placement)
            self.handles, self.skipped = [], list(found.skipped)
            for index, handle, uuid in found.handles:
                try:                 # a test read: a MIG slice may refuse memory info
                    pynvml.nvmlDeviceGetMemoryInfo(handle)
                except pynvml.NVMLError as exc:
                    self.skipped.append(f"device {index} ({uuid}): memory info: {exc}")
                    continue
                self.handles.append((index, handle))
        except Exception:
            pynvml.nvmlShutdown()
            raise
        if not self.handles:
            pynvml.nvmlShutdown()
            why = "; ".join(self.skipped) or "CUDA_VISIBLE_DEVICES allows none"
            raise RuntimeError(f"NVML can read no GPU this worker may use ({why})")

    def read(self, child_pid: int | None = None) -> Reading:
        reading = super().read(child_pid)
        reading.probe = self.name
        for index, handle in self.handles:
            reading.devices.append(self._device(index, handle))
        return reading

    def exclusive(self, devices: tuple) -> list:
        """Which of `devices` (UUIDs; () for all) take one process only
        (EXCLUSIVE_PROCESS compute mode): no second child can use them."""
        n = self.nvml
        mode = getattr(n, "NVML_COMPUTEMODE_EXCLUSIVE_PROCESS", 3)
        out = []
        for _, handle in self.handles:
            uuid = _text(n.nvmlDeviceGetUUID(handle))
            if devices and uuid not in devices:
                continue
            if _quiet(lambda: n.nvmlDeviceGetComputeMode(handle)) == mode:
                out.append(uuid)
        return out

    def processes(self, devices: tuple) -> dict | None:
        """{pid: MiB} of the compute processes NVML lists on `devices` (UUIDs; () all), as
        NVML names them (in a container, usually the host's pids: gpu_procs.py checks);
        None when NVML cannot list them here."""
        n = self.nvml
        out: dict = {}
        try:
            for _, handle in self.handles:
                if devices and _text(n.nvmlDeviceGetUUID(handle)) not in devices:
                    continue
                for proc in n.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = getattr(proc, "usedGpuMemory", None)
                    out[proc.pid] = out.get(proc.pid, 0.0) + (used or 0) / 2**20
        except Exception:    # noqa: BLE001 - not supported, no permission, old driver
            return None
        return out

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
        """Start a thread waiting on NVML Xid/ECC events; False if the driver refuses.
        `on_xid(xid, what)`: what is "xid", or a text for events without an Xid (-1)."""
        n = self.nvml
        try:
            event_set = n.nvmlEventSetCreate()
        except n.NVMLError as exc:
            log.info("NVML events unavailable (%s): Xid watching off", exc)
            return False
        wanted = n.nvmlEventTypeXidCriticalError | n.nvmlEventTypeDoubleBitEccError
        registered = 0
        for index, handle in self.handles:
            try:     # a MIG slice takes no events: its GPU does
                target = _parent_gpu(n, handle)
                mask = wanted & n.nvmlDeviceGetSupportedEventTypes(target)
                if mask:
                    n.nvmlDeviceRegisterEvents(target, mask, event_set)
                    registered += 1
            except n.NVMLError as exc:
                log.info("device %d reports no Xid events (%s)", index, exc)
        if not registered:
            _quiet(lambda: n.nvmlEventSetFree(event_set))
            log.info("no device reports Xid events: Xid watching off")
            return False
        self._xid_thread = threading.Thread(target=self._wait_events,
                                            args=(event_set, on_xid, stop),
                                            name="gpu-worker-xid", daemon=True)
        self._xid_thread.start()
        return True

    def _wait_events(self, event_set, on_xid, stop: threading.Event) -> None:
        n = self.nvml
        failures = 0
        try:
            while not stop.is_set():
                try:
                    data = n.nvmlEventSetWait_v2(event_set, XID_WAIT_MS)
                except n.NVMLError as exc:
                    code = getattr(exc, "value", None)
                    if code == n.NVML_ERROR_TIMEOUT:
                        failures = 0
                        continue
                    if stop.is_set():
                        break
                    if code == n.NVML_ERROR_GPU_IS_LOST:
                        on_xid(-1, "GPU is lost")
                        break
                    failures += 1
                    if failures >= MAX_WAIT_FAILURES:
                        log.warning("NVML event wait failed %d times in a row (%s): Xid "
                                    "watching off", failures, exc)
                        break
                    stop.wait(1.0)
                    continue
                failures = 0
                if data.eventType & n.nvmlEventTypeXidCriticalError:
                    on_xid(int(data.eventData), "xid")
                else:
                    on_xid(-1, "double-bit ECC error")
        finally:
            _quiet(lambda: n.nvmlEventSetFree(event_set))

    def close(self) -> None:
        thread = self._xid_thread
        if thread is not None:
            thread.join(XID_WAIT_MS / 1000 + 0.5)   # its stop event is set by now
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
    for why in probe.skipped:
        log.warning("GPU not monitored: %s", why)
    return probe


class XidClass(str, enum.Enum):
    REPLACE = "replace"        # the process's context is poisoned, the GPU is fine
    NOTE = "note"              # recorded by the driver, nothing to do
    UNHEALTHY = "unhealthy"    # the GPU needs a reset or is gone


def classify_xid(xid: int) -> XidClass:
    if xid in APPLICATION_XIDS:
        return XidClass.REPLACE
    if xid in NOTE_XIDS:
        return XidClass.NOTE
    return XidClass.UNHEALTHY


def _parent_gpu(nvml, handle):
    try:
        if nvml.nvmlDeviceIsMigDeviceHandle(handle):
            return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    except (nvml.NVMLError, AttributeError):
        pass
    return handle


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
