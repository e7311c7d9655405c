"""When to replace a child, and how to describe its end: pure functions of settings,
results and memory readings. Recycling is decided between jobs, never during one."""
from __future__ import annotations

import signal
from typing import Any

from ..config import Settings
from ..jobs import JobResult, JobState
from .causes import StartCause

# Errors after which a CUDA context cannot be trusted: every later call fails too.
STICKY_CUDA = ("illegal memory access", "device-side assert", "cudaErrorIllegalAddress",
               "unspecified launch failure", "CUDA error")
CUDA_OOM = ("CUDA out of memory", "OutOfMemoryError", "CUDA_ERROR_OUT_OF_MEMORY")


def cuda_failure(error: Any, refresh_on_oom: bool = True) -> str | None:
    """The reason to replace the child after this failed job, if it is a CUDA one."""
    if error is None:
        return None
    text = error if isinstance(error, str) else str(error)
    if any(p in text for p in CUDA_OOM):
        return "the job ran out of GPU memory" if refresh_on_oom else None
    if any(p in text for p in STICKY_CUDA):
        return "the job hit a sticky CUDA error (the context cannot be trusted)"
    return None


def after_job(result: JobResult, child, settings: Settings) -> tuple | None:
    """(reason, start cause) to replace the child once it is idle, judged from the job
    that ended; the cause labels the next child's start (metrics)."""
    if result.state is JobState.FAILED:
        reason = cuda_failure(result.error, settings.refresh_on_oom)
        if reason:
            return reason, StartCause.CUDA_ERROR
    if result.refresh_cold:
        return "the job asked for a cold refresh_worker", StartCause.REFRESH_COLD
    if result.refresh:
        return "the job asked for refresh_worker", StartCause.REFRESH
    if settings.refresh_worker:
        return "refresh_worker is set", StartCause.REFRESH
    if settings.max_jobs_per_child and child.jobs_run >= settings.max_jobs_per_child:
        return f"it ran {child.jobs_run} jobs (WORKER_MAX_JOBS_PER_CHILD)", StartCause.RECYCLE
    return None


def watches_memory(settings: Settings) -> bool:
    return settings.max_rss_mb > 0 or settings.max_vram_mb > 0 or settings.max_vram_fraction > 0


def memory_verdict(reading: Any, child, settings: Settings,
                   own_only: bool = False) -> str | None:
    """Between jobs: is the child over a memory limit? `reading` is a monitor.Reading of
    the child's GPUs. `own_only`: another child shares them, so the device's growth is not
    this child's; only its own allocator's reservation counts."""
    s = settings
    if s.max_rss_mb > 0 and reading.child_rss_mb > s.max_rss_mb:
        return (f"its resident memory is {reading.child_rss_mb:.0f} MiB "
                f"(WORKER_MAX_RSS_MB={s.max_rss_mb:g})")
    vram_limit = s.max_vram_mb
    if s.max_vram_fraction > 0 and reading.device_total_mb:
        fraction_limit = s.max_vram_fraction * reading.device_total_mb
        vram_limit = min(vram_limit, fraction_limit) if vram_limit else fraction_limit
    if vram_limit > 0:
        own = (child.torch or {}).get("reserved_mb", 0.0)
        grown = own if own_only else max(reading.device_used_mb - child.baseline_mb, own)
        if grown > vram_limit:
            return (f"GPU memory in use grew {grown:.0f} MiB over its baseline of "
                    f"{child.baseline_mb:.0f} MiB (limit {vram_limit:.0f} MiB)")
    return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        text = f"killed by {name}"
        if -code == signal.SIGKILL:
            text += " (out of memory?)"
        return text
    return f"exited with code {code}"
