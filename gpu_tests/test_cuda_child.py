"""On a GPU: the child uses CUDA while the parent (this test process) never creates a
CUDA context; refresh gives the memory back; the VRAM, OOM and sticky-error policies act."""
import os
import sys
import time
from pathlib import Path

from tests.support import EXAMPLES, Harness
from worker.jobs import JobState
from worker.parent.monitor import NvmlProbe

HANDLER = str(Path(__file__).resolve().parent / "handlers_cuda.py")
SLOW = dict(setup_timeout=300)


def _parent_has_no_cuda_context():
    assert "torch" not in sys.modules
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    assert "libcuda.so" not in maps


def _settle(probe, baseline, margin_mb=64, timeout=20):
    """Device memory in use back within margin of the baseline (the driver frees a dead
    process's memory a moment after it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        used = probe.read(None).device_used_mb
        if used <= baseline + margin_mb or time.monotonic() > deadline:
            return used
        time.sleep(0.2)


def test_child_uses_cuda_and_the_parent_stays_clean():
    for preload in ((), ("torch",)):      # forkserver with torch preloaded gives a CUDA child
        h = Harness(HANDLER, preload=preload, **SLOW)
        try:
            first = h.run({"x": 2}, timeout=300)
            assert first.state is JobState.COMPLETED, first.body
            assert first.output["sum"] == 2.0 * 1024 * 1024
            if preload:
                assert h.sup.snapshot()["child"]["preloaded"] == ["torch"]
        finally:
            h.close()
        _parent_has_no_cuda_context()


def test_refresh_returns_device_memory_to_the_baseline():
    h = Harness(HANDLER, **SLOW)
    try:
        assert isinstance(h.sup.probe, NvmlProbe)
        baseline = h.sup.status.baseline_mb
        h.run({"do": "leak", "mb": 1024}, timeout=300)
        assert h.sup.probe.read(None).device_used_mb > baseline + 900
        h.sup.refresh("test")
        after = h.run({}, timeout=300)
        assert after.state is JobState.COMPLETED
        h.close()
        assert _settle(NvmlProbe(), baseline) <= baseline + 64
    finally:
        h.close()


def test_a_leak_triggers_the_vram_policy():
    h = Harness(HANDLER, max_vram_mb=1500, **SLOW)
    try:
        pid = h.run({"do": "leak", "mb": 512}, timeout=300).output["pid"]
        same = h.run({"do": "leak", "mb": 512}).output["pid"]
        assert same == pid
        h.run({"do": "leak", "mb": 1024})          # now ~2 GiB over the baseline
        after = h.run({})
        assert after.output["pid"] != pid
    finally:
        h.close()


def test_cuda_oom_fails_one_job_and_the_next_succeeds():
    h = Harness(HANDLER, **SLOW)
    try:
        pid = h.run({}, timeout=300).output["pid"]
        oom = h.run({"do": "oom"})
        assert oom.state is JobState.FAILED and "out of memory" in oom.error
        after = h.run({})
        assert after.state is JobState.COMPLETED and after.output["pid"] != pid
    finally:
        h.close()


def test_kernel_fault_fails_one_job_and_the_child_is_replaced():
    h = Harness(HANDLER, **SLOW)
    try:
        pid = h.run({}, timeout=300).output["pid"]
        bad = h.run({"do": "assert"})
        assert bad.state is JobState.FAILED
        after = h.run({}, timeout=300)
        assert after.state is JobState.COMPLETED and after.output["pid"] != pid
    finally:
        h.close()


def test_embeddings_model_loads_once_per_child_on_cuda():
    h = Harness(str(EXAMPLES / "embeddings" / "handler.py"), **SLOW)
    try:
        a = h.run({"texts": ["a cat", "a kitten"]}, timeout=300)
        b = h.run({"text": "stocks"})
        assert a.output["device"] == "cuda" and b.output["device"] == "cuda"
        assert h.sup.status.spawns == 1
        assert a.extra.get("peak_vram_mb", 0) > 0
    finally:
        h.close()
