"""Fitness checks, run in the child after the handler module's setup and before Ready:
the ones the module registered (ours and the SDK's decorator), the SDK's own system and
GPU checks when the module imported the SDK, and our GPU check. A failure is a setup
failure with one clear line: the parent reports the worker unhealthy (on RunPod: the
unhealthy ping, exit 1)."""
from __future__ import annotations

import asyncio
import inspect
import sys
import time

from ..serverless.fitness import registered
from . import gpu_check


class Unfit(RuntimeError):
    """A fitness check failed; the message names it and says why."""


def run(user_checks: bool, builtin_gpu: bool, require_gpu: bool = False) -> None:
    started = time.perf_counter()
    ran = 0
    if user_checks:
        sdk = sys.modules.get("runpod.serverless.modules.rp_fitness")
        if sdk is not None:      # the SDK adds its system and GPU checks, as it would
            for register in ("_ensure_gpu_check_registered", "_ensure_system_checks_registered"):
                try:
                    getattr(sdk, register)()
                except Exception as exc:     # noqa: BLE001 - its own registration failed
                    print(f"gpu-worker: the runpod SDK's {register} failed: {exc}",
                          file=sys.stderr)
        for check in registered():
            name = getattr(check, "__name__", repr(check))
            try:
                if inspect.iscoroutinefunction(check):
                    asyncio.run(check())
                else:
                    value = check()
                    if inspect.isawaitable(value):
                        asyncio.run(_await(value))
            except Exception as exc:         # noqa: BLE001 - any failure is the finding
                raise Unfit(f"fitness check {name} failed: {type(exc).__name__}: {exc}") \
                    from None
            ran += 1
    if builtin_gpu or require_gpu:
        ran += _gpu(require_gpu)
    if ran:
        print(f"gpu-worker: {ran} fitness check(s) passed "
              f"({(time.perf_counter() - started) * 1000:.0f} ms)", file=sys.stderr)


def _gpu(require_gpu: bool) -> int:
    """The built-in GPU check; with require_gpu, no usable CUDA is a failure too."""
    def unfit(why: str) -> Unfit:
        return Unfit(f"fitness check gpu failed: {why}")
    if not gpu_check.expected():
        if require_gpu:
            raise unfit("WORKER_CHECKS=require_gpu but no GPU is visible (no NVIDIA driver "
                        "in the container, or CUDA_VISIBLE_DEVICES hides them; run it with "
                        "--gpus all or on a GPU worker)")
        return 0
    try:
        summary = gpu_check.check()
    except Exception as exc:             # noqa: BLE001
        raise unfit(f"{exc} (WORKER_CHECKS=no_gpu skips this check)") from None
    mismatch = gpu_check.torch_mismatch()
    if mismatch and require_gpu:
        raise unfit(mismatch)
    if mismatch:
        print(f"gpu-worker: ERROR: {mismatch}", file=sys.stderr)
    print(f"gpu-worker: {summary}", file=sys.stderr)
    return 1


async def _await(value):
    return await value
