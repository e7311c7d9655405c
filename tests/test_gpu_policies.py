"""GPU memory policies on any machine: every policy decision with readings injected
through the probe interface (the NVML side itself: test_gpu_monitor.py)."""
import threading

import pytest

from worker.jobs import JobState, Reason
from worker.parent.monitor import DeviceReading, HostProbe, Reading, classify_xid
from worker.parent.recycling import cuda_failure
from worker.parent.supervisor import WorkerState


class ScriptedProbe:
    """Device readings a test sets, read through the same .read(pid) as NvmlProbe."""

    def __init__(self, used_mb=1000.0, total_mb=16000.0):
        self.used_mb = used_mb
        self.total_mb = total_mb
        self.lock = threading.Lock()

    def read(self, child_pid=None) -> Reading:
        with self.lock:
            used = self.used_mb
        dev = DeviceReading(0, "GPU-test", "Scripted GPU", self.total_mb, used,
                            self.total_mb - used)
        return Reading("scripted", child_rss_mb=10.0, devices=[dev])


@pytest.fixture
def scripted(harness):
    return lambda probe, **settings: harness("misbehave.py", probe=probe, **settings)


def test_host_probe_reads_cgroup_v2_files(tmp_path):
    (tmp_path / "memory.current").write_text("104857600\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    r = HostProbe(str(tmp_path)).read(None)
    assert (r.cgroup_mb, r.cgroup_limit_mb, r.oom_kills) == (100.0, None, 2)


def test_vram_growth_over_the_limit_replaces_the_child_between_jobs(scripted):
    probe = ScriptedProbe(used_mb=1000)
    h = scripted(probe, max_vram="500")
    first = h.run({"do": "ok"})
    assert h.sup.status.baseline_mb == 1000
    probe.used_mb = 1400                       # grew 400 MiB: under the limit
    same = h.run({"do": "ok"})
    assert same.output["pid"] == first.output["pid"]
    probe.used_mb = 1700                       # grew 700 MiB: over
    leaked = h.run({"do": "ok"})
    assert leaked.state is JobState.COMPLETED  # never interrupted
    probe.used_mb = 1000                       # the old child's memory is back
    after = h.run({"do": "ok"})
    assert after.output["pid"] != leaked.output["pid"] and after.output["calls"] == 1


def test_vram_fraction_limit(scripted):
    probe = ScriptedProbe(used_mb=1000, total_mb=10000)
    h = scripted(probe, max_vram="10%")     # 1,000 MiB
    first = h.run({"do": "ok"})
    probe.used_mb = 2500
    h.run({"do": "ok"})
    probe.used_mb = 1000
    assert h.run({"do": "ok"}).output["pid"] != first.output["pid"]


def test_sticky_cuda_error_fails_the_job_and_replaces_the_child(harness):
    h = harness("misbehave.py")
    pid = h.run({"do": "ok"}).output["pid"]
    bad = h.run({"do": "cuda_error"})
    assert bad.state is JobState.FAILED and bad.reason is Reason.HANDLER_ERROR
    after = h.run({"do": "ok"})
    assert after.state is JobState.COMPLETED and after.output["pid"] != pid


@pytest.mark.parametrize("refresh_on_oom, replaced", [(True, True), (False, False)])
def test_cuda_oom_fails_clearly_and_refresh_is_configurable(harness, refresh_on_oom, replaced):
    h = harness("misbehave.py", refresh_on_oom=refresh_on_oom)
    pid = h.run({"do": "ok"}).output["pid"]
    oom = h.run({"do": "cuda_oom"})
    assert oom.state is JobState.FAILED and "CUDA out of memory" in oom.error
    assert (h.run({"do": "ok"}).output["pid"] != pid) is replaced


def test_application_xid_replaces_the_child(harness):
    h = harness("misbehave.py")
    pid = h.run({"do": "ok"}).output["pid"]
    h.sup.gpu_event(43, "xid")
    h.sup.wait_until(lambda s: s.spawns == 2 and s.child_state is not None
                     and s.child_state.value == "ready", 30)
    assert h.run({"do": "ok"}).output["pid"] != pid
    assert h.sup.state is WorkerState.RUNNING


def test_hardware_xid_makes_the_worker_unhealthy(harness):
    h = harness("misbehave.py")
    h.run({"do": "ok"})
    h.sup.gpu_event(79, "xid")
    h.sup.wait_until(lambda s: s.state is WorkerState.BROKEN, 10)
    late = h.run({"do": "ok"})
    assert late.reason is Reason.REFUSED and "GPU is unhealthy" in late.error


def test_classification():
    assert [classify_xid(x) for x in (13, 31, 43, 45, 68, 94, 109)] == ["replace"] * 7
    assert [classify_xid(x) for x in (48, 74, 79, 119)] == ["unhealthy"] * 4
    assert cuda_failure("RuntimeError: CUDA error: device-side assert triggered")
    assert cuda_failure('{"error_message": "CUDA out of memory. Tried"}') == \
        "the job ran out of GPU memory"
    assert cuda_failure("CUDA out of memory", refresh_on_oom=False) is None
    assert cuda_failure("ValueError: bad input") is None
