"""A stand-in for the pynvml module (a third-party library) on machines without a GPU:
devices, MIG slices, refusals and an event queue a test scripts. It raises pynvml's own
NVMLError with NVML's own codes, so the monitor's error handling is what runs on a GPU.
Install it with monkeypatch.setitem(sys.modules, "pynvml", fake)."""
from __future__ import annotations

import queue
from types import SimpleNamespace

import pynvml as real

MIB = 2**20


class FakeDevice:
    def __init__(self, uuid, name="Fake GPU", total_mb=16000.0, used_mb=500.0,
                 refuse=(), migs=(), parent=None, mig_refuse=(), compute_mode=0):
        self.uuid, self.name = uuid, name
        self.compute_mode = compute_mode   # 3: EXCLUSIVE_PROCESS
        self.total_mb, self.used_mb = total_mb, used_mb
        self.refuse = set(refuse)          # calls answered with NO_PERMISSION
        self.processes: dict = {}          # pid -> MiB: its compute processes
        self.parent = parent
        self.migs = [FakeDevice(m, name=f"{name} MIG", total_mb=total_mb / 7, parent=self,
                                refuse=mig_refuse) for m in migs]

    def __repr__(self):
        return f"<{self.uuid}>"


class FakeEventSet:
    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.freed = False
        self.devices: list = []


class FakeNvml:
    NVMLError = real.NVMLError

    def __init__(self, devices=(), init_error=None, event_errors=None):
        self.devices = list(devices)
        self.init_error = init_error
        self.event_errors = event_errors or {}   # device uuid -> code at registration
        self.inits = 0
        self.sets: list[FakeEventSet] = []
        for name in dir(real):
            if name.startswith(("NVML_", "nvmlEventType")):
                setattr(self, name, getattr(real, name))

    # --- what a test does -------------------------------------------------------------

    def xid(self, xid: int) -> None:
        self._event(SimpleNamespace(eventType=real.nvmlEventTypeXidCriticalError,
                                    eventData=xid))

    def ecc(self) -> None:
        self._event(SimpleNamespace(eventType=real.nvmlEventTypeDoubleBitEccError,
                                    eventData=0))

    def fail_wait(self, code: int) -> None:
        self._event(code)

    def _event(self, item) -> None:
        live = [s for s in self.sets if not s.freed]
        assert live, "nobody waits for NVML events"
        live[-1].queue.put(item)

    # --- pynvml's functions -------------------------------------------------------------

    def _check(self, device, call):
        if call in device.refuse:
            raise real.NVMLError(real.NVML_ERROR_NO_PERMISSION)

    def nvmlInit(self):
        if self.init_error is not None:
            raise real.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.devices):
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        device = self.devices[index]
        self._check(device, "handle")
        return device

    def nvmlDeviceGetHandleByUUID(self, uuid):
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for device in self.devices:
            for d in (device, *device.migs):
                if d.uuid == text:
                    self._check(d, "handle")
                    return d
        raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, device):
        self._check(device, "uuid")
        return device.uuid

    def nvmlDeviceGetName(self, device):
        return device.name

    def nvmlDeviceGetComputeMode(self, device):
        self._check(device, "compute_mode")
        return device.compute_mode

    def nvmlDeviceGetMemoryInfo(self, device):
        self._check(device, "memory")
        return SimpleNamespace(total=int(device.total_mb * MIB), used=int(device.used_mb * MIB),
                               free=int((device.total_mb - device.used_mb) * MIB))

    def nvmlDeviceGetComputeRunningProcesses(self, device):
        self._check(device, "processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=None if mb is None else int(mb * MIB))
                for pid, mb in device.processes.items()]

    def nvmlDeviceGetUtilizationRates(self, device):
        if device.parent is not None:
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=7, memory=3)

    def nvmlDeviceGetTemperature(self, device, sensor):
        return 40

    def nvmlDeviceGetPowerUsage(self, device):
        return 70000

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        return len(device.migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        return device.migs[index]

    def nvmlDeviceIsMigDeviceHandle(self, device):
        return device.parent is not None

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, device):
        return device.parent

    def nvmlDeviceGetSupportedEventTypes(self, device):
        if device.parent is not None:
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return real.nvmlEventTypeXidCriticalError | real.nvmlEventTypeDoubleBitEccError

    def nvmlEventSetCreate(self):
        event_set = FakeEventSet()
        self.sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, device, mask, event_set):
        code = self.event_errors.get(device.uuid)
        if code is not None:
            raise real.NVMLError(code)
        event_set.devices.append(device)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        try:
            item = event_set.queue.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise real.NVMLError(real.NVML_ERROR_TIMEOUT) from None
        if isinstance(item, int):
            raise real.NVMLError(item)
        return item

    def nvmlEventSetFree(self, event_set):
        event_set.freed = True
