"""A spare child on the GPU (WORKER_SPARE=on): it sets up and warms beside the active
child, takes over after a refresh and after a CUDA OOM, holds its own VRAM (seen in
/health), and the VRAM of both is back once the worker stops."""
import pytest

from gpu_tests import device_used_mb, settle
from gpu_tests.test_cuda_child import HANDLER, SLOW
from tests.support import Harness
from worker.jobs import JobState

pytestmark = pytest.mark.torch_cuda


def spare_ready(h):
    return h.sup.wait_until(lambda s: (s.children[0].spare or {}).get("state") == "ready",
                            300)


def test_a_spare_on_the_gpu_takes_over_after_a_refresh_and_an_oom():
    before = device_used_mb()
    h = Harness(HANDLER, spare="on", **SLOW)
    try:
        first = h.run({}, timeout=300)
        assert first.state is JobState.COMPLETED and spare_ready(h)
        # it moved its weights before Ready: its heartbeat says so
        assert h.sup.wait_until(lambda s: (s.children[0].spare or {}).get("vram_mb"), 60)
        spare = h.sup.snapshot()["children"][0]["spare"]
        h.sup.refresh("test")
        nxt = h.run({}, timeout=300)
        assert nxt.output["pid"] == spare["pid"] != first.output["pid"]
        assert spare_ready(h)
        spare = h.sup.snapshot()["children"][0]["spare"]
        assert h.run({"do": "oom"}).state is JobState.FAILED
        after = h.run({}, timeout=300)
        assert after.state is JobState.COMPLETED and after.output["pid"] == spare["pid"]
    finally:
        h.close()
    assert settle(before) <= before + 64
