"""The metrics' GPU series on a real GPU: NVML's memory and utilisation under the child
that holds the GPU, and the child's torch reservation from its heartbeat."""
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Harness
from worker.jobs import JobState

pytestmark = pytest.mark.torch_cuda

from gpu_tests.test_cuda_child import HANDLER, SLOW  # noqa: E402


def test_gpu_series_name_the_child_and_its_gpu():
    h = Harness(HANDLER, **SLOW)
    try:
        assert h.run({}, timeout=300).state is JobState.COMPLETED
        deadline = time.monotonic() + 30       # the heartbeat brings torch's figures
        while not (h.sup.status.torch or {}).get("reserved_mb"):
            assert time.monotonic() < deadline, "no torch figures in the heartbeat"
            time.sleep(0.2)
        series = {}
        for family in text_string_to_metric_families(h.sup.metrics.text().decode()):
            for s in family.samples:
                series.setdefault(s.name, []).append((s.labels, s.value))
        used = series["gpu_worker_gpu_memory_used_bytes"]
        assert used and all(labels["child"] == "0" and labels["gpu"].startswith(("GPU-", "MIG-"))
                            and value > 0 for labels, value in used)
        assert all(0 <= v <= 1 for _, v in series.get("gpu_worker_gpu_utilization_ratio", []))
        (reserved,) = series["gpu_worker_child_torch_reserved_bytes"]
        assert reserved[1] > 0
        assert series["gpu_worker_jobs_total"][0][1] == 1
    finally:
        h.close()
