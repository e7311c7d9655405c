"""The child uses CUDA; the parent (this test process) never creates a CUDA context."""
import os
import sys
from pathlib import Path

from tests.support import Harness
from worker.jobs import JobState

HANDLER = str(Path(__file__).resolve().parent / "handlers_cuda.py")


def _parent_has_no_cuda_context():
    assert "torch" not in sys.modules
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    assert "libcuda.so" not in maps


def test_child_runs_cuda_and_refreshes_while_parent_stays_clean():
    for preload in ((), ("torch",)):
        h = Harness(HANDLER, preload=preload, setup_timeout=300)
        try:
            first = h.run({"x": 2}, timeout=300)
            assert first.state is JobState.COMPLETED, first.body
            assert first.output["sum"] == 2.0 * 1024 * 1024
            h.sup.refresh("test")
            second = h.run({"x": 1}, timeout=300)
            assert second.state is JobState.COMPLETED, second.body
            assert second.output["pid"] != first.output["pid"]
        finally:
            h.close()
        _parent_has_no_cuda_context()
