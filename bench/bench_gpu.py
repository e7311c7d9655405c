"""The GPU rows of docs/benchmarks.md, on whatever NVIDIA GPU this machine has: the tiny
model of gpu_tests/handlers_model.py (built at import, no download) and the misbehaving
CUDA handler of gpu_tests/handlers_cuda.py.

    python bench/bench_gpu.py [--refreshes 5]      # `make gpu-check` runs it

Rows, one line each ("ROW name: figure"):
- a cold child's steps (gpu_tests/cold_steps.py in a fresh interpreter): torch import,
  CUDA context, model build, move to device, first forward; and whether persistence
  mode is on (without it the driver may tear the GPU down between processes);
- cold start: `python -m worker handler.py --test_input ...` from launch to exit, as the
  user runs it, and a supervisor from creation to its first result;
- refresh → next job with WORKER_PRELOAD=torch: median of --refreshes; the same with
  WORKER_WARM_REFRESH and the model built on the CPU at import;
- VRAM: in use before the worker, with its child, after a refresh, after it stopped;
- CUDA OOM → the next job succeeds (in a fresh child), and how long that took;
- a kernel fault (device-side assert) → the child replaced, once, and how long it took;
- refresh, OOM and kernel fault again with WORKER_SPARE=on (the next child set up and
  warmed beside the active one), and VRAM back to the baseline once both have gone.

This process is the parent: it never imports torch. Prints figures; exits 1 when a row's
outcome is wrong (a next job that failed, VRAM not back), so a check can rely on it.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import loopback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_tests import device_used_mb as used_mb, settle  # noqa: E402
from tests.support import Harness            # noqa: E402
from worker.jobs import JobState             # noqa: E402
from worker.parent.monitor import NvmlProbe  # noqa: E402

MODEL = str(ROOT / "gpu_tests" / "handlers_model.py")
CUDA = str(ROOT / "gpu_tests" / "handlers_cuda.py")
MODEL_WARM = str(ROOT / "gpu_tests" / "handlers_model_warm.py")
SLOW = dict(setup_timeout=300)
failures = []


def row(name: str, text: str, ok: bool = True) -> None:
    print(f"ROW {name}: {text}{'' if ok else '  <-- WRONG'}", flush=True)
    if not ok:
        failures.append(name)


def cold_steps() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "gpu_tests" / "cold_steps.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    ok = proc.returncode == 0
    steps = json.loads(proc.stdout.strip().splitlines()[-1]) if ok else {}
    row("a cold child's steps (ms)", ", ".join(f"{k} {v:,.0f}" for k, v in steps.items())
        if ok else f"exit {proc.returncode}: {proc.stderr[-300:]}", ok)
    probe = NvmlProbe()
    try:
        n = probe.nvml
        modes = [_quiet_mode(n, h) for _, h in probe.handles]
    finally:
        probe.close()
    row("persistence mode", ", ".join(modes))


def _quiet_mode(n, handle) -> str:
    try:
        return "on" if n.nvmlDeviceGetPersistenceMode(handle) else "off"
    except Exception as exc:   # noqa: BLE001 - a MIG slice, an old driver
        return f"unknown ({exc})"


def cold_start() -> None:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "worker", MODEL, "--test_input",
                           json.dumps({"input": {"text": "a cat"}})], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - started
    ok = proc.returncode == 0 and '"device": "cuda"' in proc.stdout
    row("cold start, one-shot CLI (launch to exit, tiny model on the GPU)",
        f"{took:.2f} s" + ("" if ok else f" (exit {proc.returncode}: {proc.stderr[-300:]})"), ok)
    for preload in ((), ("torch",)):
        started = time.perf_counter()
        h = Harness(MODEL, preload=preload, **SLOW)
        try:
            first = h.run({"text": "a cat"}, timeout=300)
            took = time.perf_counter() - started
        finally:
            h.close()
        row(f"cold start, supervisor to first result (preload {list(preload)})",
            f"{took:.2f} s", first.state is JobState.COMPLETED)


def spare_ready(h, timeout: float = 300) -> bool:
    return h.sup.wait_until(lambda s: (s.children[0].spare or {}).get("state") == "ready",
                            timeout)


def with_spare(n: int) -> None:
    """Refresh -> next job done with a spare set up and warmed (WORKER_SPARE=on), and the
    VRAM of both children back once the worker stopped."""
    before = used_mb()
    h = Harness(MODEL, preload=("torch",), spare="on", **SLOW)
    try:
        first = h.run({"text": "a cat"}, timeout=300)
        times, same, pids = [], True, {first.output["pid"]}
        for _ in range(n):
            if not spare_ready(h):
                row("refresh with a spare", "no spare became ready", False)
                return
            started = time.perf_counter()
            h.sup.refresh("bench")
            result = h.run({"text": "a cat"}, timeout=300)
            times.append((time.perf_counter() - started) * 1000)
            same = same and result.output["first"] == first.output["first"]
            pids.add(result.output["pid"])
        spare_ready(h)
        both = used_mb()
        promotions = h.sup.snapshot()["children"][0]["spare"]["promotions"]
    finally:
        h.close()
    stopped = settle(before)
    row("refresh -> next job done with a spare, WORKER_PRELOAD=torch, tiny model (median)",
        f"{statistics.median(times):.0f} ms (min {min(times):.0f}, max {max(times):.0f}, "
        f"n={n}); {promotions} promotions", same and len(pids) == n + 1 and promotions == n)
    row("VRAM with a spare: before / active and spare / stopped",
        f"{before:.0f} / {both:.0f} / {stopped:.0f} MiB", stopped <= before + 64)


def refresh_and_vram(n: int) -> None:
    before = used_mb()
    h = Harness(MODEL, preload=("torch",), **SLOW)
    try:
        first = h.run({"text": "a cat"}, timeout=300)
        with_child = used_mb()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            h.sup.refresh("bench")
            result = h.run({"text": "a cat"}, timeout=300)
            times.append((time.perf_counter() - started) * 1000)
            if result.output["first"] != first.output["first"]:
                row("refresh answers", "different answers after a refresh", False)
        after_refresh = used_mb()
        baseline = h.sup.status.baseline_mb
    finally:
        h.close()
    stopped = settle(before)
    row("refresh -> next job done, WORKER_PRELOAD=torch, tiny model (median)",
        f"{statistics.median(times):.0f} ms (min {min(times):.0f}, max {max(times):.0f}, "
        f"n={n})")
    row("VRAM in use: before / with child / after refreshes / stopped",
        f"{before:.0f} / {with_child:.0f} / {after_refresh:.0f} / {stopped:.0f} MiB; "
        f"the last child's baseline {baseline:.0f} MiB",
        abs(after_refresh - with_child) <= 64 and stopped <= before + 64
        and abs(baseline - before) <= 64)


def warm_refresh(n: int) -> None:
    """The same tiny model written for WORKER_WARM_REFRESH (built on the CPU at import, moved
    to the GPU on each child's first job): refresh -> next job done."""
    h = Harness(MODEL_WARM, preload=("torch",), warm_refresh=True, **SLOW)
    try:
        first = h.run({"text": "a cat"}, timeout=300)
        times, same = [], True
        for _ in range(n):
            started = time.perf_counter()
            h.sup.refresh("bench")
            result = h.run({"text": "a cat"}, timeout=300)
            times.append((time.perf_counter() - started) * 1000)
            same = same and result.output["first"] == first.output["first"]
        status = h.sup.snapshot()["warm_refresh"]
    finally:
        h.close()
    row("warm refresh -> next job done, tiny model on the CPU at import, GPU on first job "
        "(median)", f"{statistics.median(times):.0f} ms (min {min(times):.0f}, max "
        f"{max(times):.0f}, n={n}); warm refresh: {status}",
        same and status == "on" and first.output["device"] == "cuda")


def oom_and_fault(spare: str = "off") -> None:
    label = "" if spare == "off" else ", with a spare"
    h = Harness(CUDA, spare=spare, **SLOW)
    try:
        pid = h.run({}, timeout=300).output["pid"]
        if spare == "on" and not spare_ready(h):
            row(f"CUDA OOM{label}", "no spare became ready", False)
            return
        oom = h.run({"do": "oom"})
        started = time.perf_counter()
        nxt = h.run({}, timeout=300)
        took = time.perf_counter() - started
        row(f"CUDA OOM -> next job succeeds (in a fresh child){label}",
            f"{took * 1000:.0f} ms", oom.state is JobState.FAILED
            and nxt.state is JobState.COMPLETED and nxt.output["pid"] != pid)
        if spare == "on" and not spare_ready(h):
            row(f"kernel fault{label}", "no spare became ready", False)
            return
        spawns = h.sup.status.spawns
        pid = nxt.output["pid"]
        bad = h.run({"do": "assert"})
        started = time.perf_counter()
        nxt = h.run({}, timeout=300)
        took = time.perf_counter() - started
        again = h.run({})
        status = h.sup.status
        row(f"kernel fault -> child replaced once, next job succeeds{label}",
            f"{took * 1000:.0f} ms; NVML events: {list(status.gpu_events) or 'none'}",
            bad.state is JobState.FAILED and nxt.state is JobState.COMPLETED
            and nxt.output["pid"] != pid and again.output["pid"] == nxt.output["pid"]
            and status.spawns == spawns + 1)
    finally:
        h.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--refreshes", type=int, default=5)
    args = p.parse_args()
    try:
        probe = NvmlProbe()
    except Exception as exc:   # noqa: BLE001 - no library, no driver, no device
        print(f"bench_gpu: needs an NVIDIA GPU ({type(exc).__name__}: {exc})", flush=True)
        return 2
    names = [probe.nvml.nvmlDeviceGetName(h) for _, h in probe.handles]
    driver = probe.nvml.nvmlSystemGetDriverVersion()
    probe.close()
    print(f"GPU: {', '.join(map(str, names))}; driver {driver}", flush=True)
    for step in (cold_steps, cold_start, lambda: refresh_and_vram(args.refreshes),
                 lambda: with_spare(args.refreshes), lambda: warm_refresh(args.refreshes),
                 oom_and_fault, lambda: oom_and_fault("on")):
        try:
            step()
        except Exception as exc:   # noqa: BLE001 - one row's failure must not hide the rest
            row(getattr(step, "__name__", "refresh and VRAM"),
                f"{type(exc).__name__}: {exc}", False)
    return 1 if failures else 0


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        sys.exit(main())
