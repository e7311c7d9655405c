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


def _sleeper():
    import subprocess
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_nvml_per_process_figures_count_only_where_its_pids_are_ours(nvml):
    """NVML names processes by the driver's pids: a listing with none of this worker's
    descendants (a container) is not trusted; once one of ours is listed, the active
    child's NVML footprint (its CUDA context included) is what a spare needs."""
    from worker.parent.gpu_procs import ProcessMemory
    probe = nvml(FakeDevice("GPU-a", total_mb=16000, used_mb=13000))    # 3,000 free
    dev = probe.nvml.devices[0]
    child = _sleeper()
    try:
        procs = ProcessMemory(probe)
        dev.processes = {1: 9000.0, 4_000_000: 2800.0}      # not ours: the host's pids
        assert procs.listing(("GPU-a",)) is None and not procs.ours
        assert spare_fit.check(probe, child.pid, ("GPU-a",), 1000.0, procs).ok
        dev.processes = {1: 9000.0, child.pid: 2800.0}      # ours: trusted from now on
        assert procs.of_tree(child.pid, ("GPU-a",)) == 2800.0 and procs.ours
        unfit = spare_fit.check(probe, child.pid, ("GPU-a",), 1000.0, procs)
        assert not unfit.ok and unfit.short_of_gpu and unfit.text.startswith("GPU memory:")
        assert "footprint (NVML) is 2,800 MiB" in unfit.text
        dev.refuse.add("processes")                          # the driver stops answering
        assert procs.listing(("GPU-a",)) is None
        assert spare_fit.check(probe, child.pid, ("GPU-a",), 1000.0, procs).ok
    finally:
        child.kill()
        child.wait()


def test_the_settle_wait_is_for_the_dead_childs_pid_where_nvml_lists_ours(nvml):
    """Beside a sibling on the same GPU no total says when a dead child's memory is back;
    its pid leaving NVML's list does. Without a listing the total's rule holds."""
    import threading
    import time
    from worker.parent import device_settle
    from worker.parent.actions import Settle
    from worker.parent.gpu_procs import ProcessMemory
    probe = nvml(FakeDevice("GPU-a", total_mb=16000, used_mb=9000))
    dev = probe.nvml.devices[0]
    sibling, gone = _sleeper(), _sleeper()
    try:
        procs = ProcessMemory(probe)
        dev.processes = {sibling.pid: 4000.0, gone.pid: 4000.0}
        shared = Settle(0, 2, ("GPU-a",), None, None, gone.pid)    # a shared slot: no total
        wait = device_settle.Wait(probe, procs, shared)
        assert wait.by_pid and not wait.done()
        freed = threading.Timer(0.3, lambda: dev.processes.pop(gone.pid))
        freed.start()
        started = time.monotonic()
        used, fits = wait.wait(threading.Event(), lambda: False)
        assert fits and 0.25 <= time.monotonic() - started < device_settle.BOUND_S
        assert device_settle.Wait(probe, procs, shared).done()      # already gone: no wait
        dev.refuse.add("processes")                 # no listing: the baseline rule
        by_total = Settle(0, 3, ("GPU-a",), 8000.0, None, gone.pid)
        assert not device_settle.Wait(probe, procs, by_total).by_pid
        assert not device_settle.Wait(probe, procs, by_total).done()     # 9,000 > 8,064
    finally:
        for p in (sibling, gone):
            p.kill()
            p.wait()


def test_after_an_application_xid_a_real_spare_runs_the_gpu_check_then_takes_over(
        nvml, monkeypatch, tmp_path, caplog):
    """The spare (a real child) is asked for the GPU check and answers it (here, with no
    GPU, "no GPU here"); only then does the next job run on it."""
    monkeypatch.chdir(tmp_path)
    fake_probe = nvml(FakeDevice("GPU-a"))
    target = ScriptTarget(str(HANDLERS / "spare_state.py"), [])
    with caplog.at_level(logging.INFO, logger="worker"):
        sup = Supervisor(Settings(**FAST, spare="on"), target, probe=fake_probe).start()
        try:
            assert sup.wait_until(lambda s: (s.children[0].spare or {}).get("state")
                                  == "ready", 60)
            spare_pid = sup.status.children[0].spare["pid"]
            listener = Collector()
            sup.submit({"id": "a", "input": {}}, listener)
            first = listener.wait(["a"])["a"].body["output"]["pid"]
            fake_probe.nvml.xid(13)            # after a job: the active child is replaced
            assert sup.wait_until(lambda s: s.gpu_events, 30)
            sup.submit({"id": "b", "input": {}}, listener)
            result = listener.wait(["b"])["b"]
            assert result.state is JobState.COMPLETED
            assert result.body["output"]["pid"] == spare_pid != first
        finally:
            sup.stop()
            assert sup.join(30)
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"spare child {spare_pid} passed the GPU check after Xid 13: no GPU here"
               in line for line in lines), lines
