"""Several children on a GPU machine. On one GPU: two children share it, each with its own
VRAM limit (only its own reservation counts); on several: one child per GPU, each seeing
only its own (run `make gpu-check` on a machine with 2+ GPUs for that test)."""
import pytest

from gpu_tests.conftest import gpu_count
from tests.support import Harness
from worker.jobs import JobState

pytestmark = pytest.mark.torch_cuda

from gpu_tests.test_cuda_child import HANDLER, SLOW  # noqa: E402


def test_two_children_share_one_gpu_each_with_its_own_vram_limit():
    h = Harness(HANDLER, children=2, gpus_per_child=1, max_vram="512", **SLOW)
    try:
        first = h.run({}, timeout=300)        # child 0
        leak = h.run({"do": "leak", "mb": 768}, timeout=300)   # child 1: the oldest idle
        assert first.state is leak.state is JobState.COMPLETED, (first.body, leak.body)
        assert {first.output["child"], leak.output["child"]} == {"0", "1"}
        devices = h.sup.status.children[0].devices
        assert first.output["visible"] == leak.output["visible"] == ",".join(devices)
        assert first.output["count"] == leak.output["count"] == 1
        # The leaking child is replaced (its own reservation is over 512 MiB); the other,
        # on the same GPU, is not, though the device's memory grew for both.
        assert h.sup.wait_until(lambda s: leak.output["pid"] not in
                                [c.pid for c in s.children], 120)
        assert first.output["pid"] in [c.pid for c in h.sup.status.children]
        again = [h.run({}, timeout=300) for _ in range(2)]
        assert all(r.state is JobState.COMPLETED for r in again)
    finally:
        h.close()


@pytest.mark.skipif(gpu_count()[0] < 2, reason="needs 2 or more GPUs")
def test_one_child_per_gpu_each_sees_only_its_own():
    n = gpu_count()[0]
    h = Harness(HANDLER, **SLOW)              # the default: one child per GPU
    try:
        assert len(h.sup.status.children) == n
        results = [h.run({}, timeout=300) for _ in range(n)]   # round the idle children
        assert all(r.state is JobState.COMPLETED and r.output["count"] == 1 for r in results)
        assert len({r.output["visible"] for r in results}) == n
        assert all(r.output["visible"].startswith(("GPU-", "MIG-")) for r in results)
    finally:
        h.close()
