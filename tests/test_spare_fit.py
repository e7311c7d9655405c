"""The spare's fit check (parent/spare_fit.py) with real processes and a scripted NVML
(tests/fake_nvml.py) and cgroup files: host memory by the active child's own pages
against what the container may still use, GPU memory by its peak against what is free,
EXCLUSIVE_PROCESS as never; and a worker whose spare does not fit serves without one,
saying why once."""
import logging
import os
import sys

import pytest

from tests.fake_nvml import FakeDevice, FakeNvml
from tests.support import FAST, HANDLERS, Collector
from worker.config import Settings
from worker.jobs import JobState
from worker.parent import spare_fit
from worker.parent.monitor import HostProbe, NvmlProbe
from worker.parent.supervisor import Supervisor
from worker.targets import ScriptTarget


def cgroup(tmp_path, current_mb, limit_mb):
    root = tmp_path / "cgroup"
    root.mkdir(exist_ok=True)
    (root / "memory.current").write_text(str(int(current_mb * 2**20)))
    (root / "memory.max").write_text(str(int(limit_mb * 2**20)))
    return HostProbe(cgroup_root=str(root))


def test_host_memory_by_the_active_childs_own_pages(tmp_path):
    pid = os.getpid()                       # a real process with pages of its own
    own = spare_fit.own_mb(pid)
    assert own > 1.0
    fits = spare_fit.check(cgroup(tmp_path, 1000, 1000 + own + 1000), pid, (), 0.0)
    assert fits.ok, fits
    tight = spare_fit.check(cgroup(tmp_path, 1000, 1000 + own), pid, (), 0.0)
    assert not tight.ok and not tight.never
    assert "MiB of its own" in tight.text and "available" in tight.text


@pytest.fixture
def nvml(monkeypatch):
    def install(*devices):
        fake = FakeNvml(list(devices))
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return NvmlProbe()
    return install


def test_gpu_memory_by_the_peak_against_what_is_free(nvml):
    probe = nvml(FakeDevice("GPU-a", total_mb=16000, used_mb=13000))    # 3,000 free
    assert spare_fit.check(probe, None, ("GPU-a",), 2000.0).ok
    unfit = spare_fit.check(probe, None, ("GPU-a",), 2900.0)             # + margin
    assert not unfit.ok and "peak is 2,900 MiB, 3,000 MiB are free" in unfit.text


def test_an_exclusive_process_gpu_never_fits_a_spare(nvml):
    probe = nvml(FakeDevice("GPU-a", compute_mode=3), FakeDevice("GPU-b"))
    never = spare_fit.check(probe, None, ("GPU-a",), 0.0)
    assert not never.ok and never.never and "EXCLUSIVE_PROCESS" in never.text
    assert spare_fit.check(probe, None, ("GPU-b",), 0.0).ok


def test_a_spare_that_does_not_fit_is_not_built_and_the_worker_serves(tmp_path, caplog):
    probe = cgroup(tmp_path, 1000, 1001)          # 1 MiB left in the container
    target = ScriptTarget(str(HANDLERS / "edges.py"), [])
    with caplog.at_level(logging.WARNING, logger="worker"):
        sup = Supervisor(Settings(**FAST, spare="on"), target, probe=probe).start()
        try:
            assert sup.wait_until(lambda s: (s.children[0].spare or {}).get("unfit"), 60)
            spare = sup.snapshot()["children"][0]["spare"]
            assert spare["pid"] is None and "host memory" in spare["unfit"]
            listener = Collector()
            sup.submit({"id": "a", "input": {"do": "echo", "echo": 1}}, listener)
            assert listener.wait(["a"])["a"].state is JobState.COMPLETED
        finally:
            sup.stop()
            assert sup.join(30)
    lines = [r.getMessage() for r in caplog.records if "no spare child for now" in
             r.getMessage()]
    assert len(lines) == 1 and "MiB" in lines[0]
