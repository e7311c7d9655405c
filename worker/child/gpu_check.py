"""The built-in GPU fitness check, run in the child before it reports ready: when NVML
sees GPUs this child may use, CUDA must initialise here and each device must take a small
allocation, a memset run on the device, and a copy back.

It uses the CUDA driver API through ctypes (no torch needed), on each device's primary
context, and releases the context afterwards, so a handler that never uses CUDA keeps no
GPU memory for it.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys

from ..gpus import visible_devices

SIZE = 1 << 20       # 1 MiB


class GpuUnfit(RuntimeError):
    pass


def expected() -> int:
    """How many GPUs NVML sees for this process, CUDA_VISIBLE_DEVICES applied as CUDA
    applies it (0 when there is no driver, or the variable hides them all)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        found = visible_devices(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return len(found.handles) + len(found.skipped)
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


def driver_cuda() -> tuple | None:
    """The newest CUDA version the driver supports, (major, minor); None without one."""
    try:
        cuda = _driver()
    except GpuUnfit:
        return None
    version = ctypes.c_int()
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, version.value % 1000 // 10


def torch_cuda() -> tuple | None:
    """The CUDA version torch was built for, (major, minor), read without importing torch
    when it is not imported yet; None for a CPU build or no torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        text = getattr(getattr(torch, "version", None), "cuda", None)
    else:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        try:
            with open(os.path.join(spec.submodule_search_locations[0], "version.py")) as f:
                found = re.search(r"^cuda\b[^=\n]*=\s*['\"]([0-9.]+)['\"]", f.read(), re.M)
        except OSError:
            return None
        text = found and found.group(1)
    if not text:
        return None
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def torch_mismatch() -> str | None:
    """Why torch cannot use this driver's CUDA (it would run on the CPU), or None. Within
    one major version the driver runs newer minor versions (CUDA's minor version
    compatibility); a newer major version needs a newer driver."""
    built, driver = torch_cuda(), driver_cuda()
    if built is None or driver is None or built[0] <= driver[0]:
        return None
    return (f"torch is built for CUDA {built[0]}.{built[1]} but the driver supports CUDA "
            f"{driver[0]}.{driver[1]}: torch.cuda.is_available() is False and the handler "
            f"would run on the CPU. Use a host whose driver supports CUDA {built[0]}, or an "
            f"image with a torch built for CUDA {driver[0]}.x (docs/docker.md)")
