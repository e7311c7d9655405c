"""The built-in GPU fitness check, run in the child before it reports ready: when NVML
sees GPUs this child may use, CUDA must initialise here and each device must take a small
allocation, a memset run on the device, and a copy back.

It uses the CUDA driver API through ctypes (no torch needed), on each device's primary
context, and releases the context afterwards, so a handler that never uses CUDA keeps no
GPU memory for it.
"""
from __future__ import annotations

import ctypes
import os

SIZE = 1 << 20       # 1 MiB


class GpuUnfit(RuntimeError):
    pass


def expected() -> int:
    """How many GPUs NVML sees for this process (0 when there is no driver, or
    CUDA_VISIBLE_DEVICES hides them all)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _driver():
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise GpuUnfit("NVML sees a GPU but the CUDA driver library (libcuda.so.1) cannot be "
                   "loaded: is the container started with the NVIDIA runtime "
                   "(NVIDIA_DRIVER_CAPABILITIES=compute,utility)?")


def check() -> str:
    """Raise GpuUnfit with the reason, or return a one-line summary."""
    cuda = _driver()

    def call(name: str, *args) -> None:
        fn = getattr(cuda, name)
        code = fn(*args)
        if code != 0:
            text = ctypes.c_char_p()
            cuda.cuGetErrorString(code, ctypes.byref(text))
            reason = text.value.decode() if text.value else "unknown error"
            raise GpuUnfit(f"{name} failed: CUDA error {code} ({reason})")

    call("cuInit", 0)
    count = ctypes.c_int()
    call("cuDeviceGetCount", ctypes.byref(count))
    if count.value < 1:
        raise GpuUnfit("NVML sees a GPU but CUDA finds no device (CUDA_VISIBLE_DEVICES, "
                       "or a CUDA context created before the fork?)")
    for index in range(count.value):
        device = ctypes.c_int()
        call("cuDeviceGet", ctypes.byref(device), index)
        context = ctypes.c_void_p()
        call("cuDevicePrimaryCtxRetain", ctypes.byref(context), device)
        try:
            call("cuCtxSetCurrent", context)
            pointer = ctypes.c_uint64()
            call("cuMemAlloc_v2", ctypes.byref(pointer), ctypes.c_size_t(SIZE))
            try:
                call("cuMemsetD8_v2", pointer, ctypes.c_ubyte(0x5A), ctypes.c_size_t(SIZE))
                host = (ctypes.c_ubyte * SIZE)()
                call("cuMemcpyDtoH_v2", host, pointer, ctypes.c_size_t(SIZE))
                if host[0] != 0x5A or host[SIZE - 1] != 0x5A:
                    raise GpuUnfit(f"device {index}: memory read back wrong values")
            finally:
                cuda.cuMemFree_v2(pointer)
        finally:
            cuda.cuCtxSetCurrent(None)
            cuda.cuDevicePrimaryCtxRelease_v2(device)
    return f"{count.value} GPU(s) passed the CUDA check"
