"""The GPU monitor against a scripted NVML (tests/fake_nvml.py): CUDA_VISIBLE_DEVICES as
CUDA reads it, MIG slices, devices that refuse, the Xid watcher's errors, Xids put on the
right child, and the baseline taken once a dead child's memory is back. The monitor's
code is the one that runs on a GPU; only the pynvml module is stood in for."""
import logging
import os
import subprocess
import sys
import threading

import pynvml
import pytest

from tests.fake_nvml import FakeDevice, FakeNvml
from tests.support import PYTHON, ROOT
from worker import gpus
from worker.jobs import JobState
from worker.parent import device_settle
from worker.parent.monitor import (DeviceReading, HostProbe, NvmlProbe, Reading,
                                   classify_xid, make_probe)
from worker.parent.supervisor import WorkerState

UUIDS = ["GPU-aaa-111", "GPU-abb-222", "GPU-ccc-333"]


@pytest.fixture
def nvml(monkeypatch):
    def install(*devices, **kw):
        fake = FakeNvml(devices or [FakeDevice(u) for u in UUIDS], **kw)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake
    return install


def _mapped(fake, visible):
    return [(i, h.uuid) for i, h, _ in gpus.visible_devices(fake, visible).handles]


@pytest.mark.parametrize("visible, expected", [
    (None, [(0, "GPU-aaa-111"), (1, "GPU-abb-222"), (2, "GPU-ccc-333")]),
    ("2,0", [(0, "GPU-ccc-333"), (1, "GPU-aaa-111")]),
    ("", []),                                   # set but empty: CUDA shows no device
    ("all", []), ("none", []), ("-1", []), ("void", []),
    ("0,0", []),                                # a device named twice: no device at all
    ("1,2,1", []),
    ("1gpu", [(0, "GPU-abb-222")]),             # read like strtoul
    (" 1 , 0 ", [(0, "GPU-abb-222"), (1, "GPU-aaa-111")]),
    ("1,7,2", [(0, "GPU-abb-222")]),            # stops at the first device not there
    ("0,-1,2", [(0, "GPU-aaa-111")]),
    ("GPU-ccc-333,GPU-aaa-111", [(0, "GPU-ccc-333"), (1, "GPU-aaa-111")]),
    ("GPU-ab", [(0, "GPU-abb-222")]),           # a unique prefix
    ("GPU-a", []),                              # ambiguous: stops there
    ("GPU-ccc,1", [(0, "GPU-ccc-333")]),        # a UUID list takes only UUIDs
    ("GPU-ccc,GPU-ccc-333", []),                # two names of one device
    ("GPU-zzz,GPU-aaa-111", []),
])
def test_cuda_visible_devices_as_cuda_reads_it(visible, expected):
    fake = FakeNvml([FakeDevice(u) for u in UUIDS])
    assert _mapped(fake, visible) == expected


def test_mig_slices_are_found_by_their_uuid():
    fake = FakeNvml([FakeDevice("GPU-aaa-111", migs=["MIG-s1-aaaa", "MIG-s2-bbbb"])])
    assert _mapped(fake, "MIG-s2-bbbb") == [(0, "MIG-s2-bbbb")]
    assert _mapped(fake, "MIG-s1") == [(0, "MIG-s1-aaaa")]          # prefix, by scanning
    assert _mapped(fake, "MIG-s1-aaaa,MIG-s2-bbbb") == [(0, "MIG-s1-aaaa"), (1, "MIG-s2-bbbb")]


def test_a_device_that_refuses_leaves_the_others_monitored(nvml, caplog):
    caplog.set_level(logging.INFO, logger="worker.monitor")
    fake = nvml(FakeDevice(UUIDS[0]), FakeDevice(UUIDS[1], refuse={"uuid"}),
                FakeDevice(UUIDS[2], used_mb=900))
    probe = make_probe()
    assert isinstance(probe, NvmlProbe)
    reading = probe.read(None)
    assert [(d.index, d.uuid) for d in reading.devices] == [(0, UUIDS[0]), (2, UUIDS[2])]
    assert reading.device_used_mb == 1400
    assert sum("GPU not monitored" in r.message and "Insufficient Permissions" in r.message
               for r in caplog.records) == 1
    probe.close()
    assert fake.inits == 0


def test_a_mig_slice_that_refuses_memory_info_is_never_a_zero_baseline(nvml, caplog):
    caplog.set_level(logging.INFO, logger="worker.monitor")
    fake = nvml(FakeDevice("GPU-aaa-111", migs=["MIG-s1-aaaa"], mig_refuse={"memory"}))
    probe = make_probe("MIG-s1-aaaa")
    assert isinstance(probe, HostProbe) and probe.name == "host"
    [line] = [r.message for r in caplog.records if "no GPU monitoring" in r.message]
    assert "MIG-s1-aaaa" in line and "memory info" in line
    assert fake.inits == 0           # NVML shut down again


@pytest.mark.parametrize("setup", ["no driver", "no device", "all hidden"])
def test_no_usable_gpu_falls_back_to_the_host_probe_with_one_line(nvml, caplog, setup):
    caplog.set_level(logging.INFO, logger="worker.monitor")
    if setup == "no driver":
        nvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        probe = make_probe()
    elif setup == "no device":
        nvml(FakeDevice("GPU-x")).devices.clear()
        probe = make_probe()
    else:
        nvml()
        probe = make_probe("")
    assert isinstance(probe, HostProbe) and probe.name == "host"
    assert sum("no GPU monitoring" in r.message for r in caplog.records) == 1


def test_the_host_fallback_serves_a_real_child(harness):
    h = harness("misbehave.py", probe=HostProbe())
    pid = h.run({"do": "ok"}).output["pid"]
    memory = h.sup.snapshot()["memory"]
    assert memory["probe"] == "host" and memory["devices"] == []
    assert memory["child_rss_mb"] > 5 and h.sup.child_pid == pid


# --- the Xid watcher ------------------------------------------------------------------

class Heard:
    def __init__(self):
        self.events, self.cond = [], threading.Condition()

    def __call__(self, xid, what):
        with self.cond:
            self.events.append((xid, what))
            self.cond.notify_all()

    def wait(self, n, timeout=10):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.events) >= n, timeout), self.events
        return self.events


def _watch(fake, **kw):
    probe = NvmlProbe(**kw)
    heard, stop = Heard(), threading.Event()
    assert probe.watch_xids(heard, stop)
    return probe, heard, stop


def test_watcher_reports_xids_and_ecc_and_frees_its_set_on_stop(nvml):
    fake = nvml()
    probe, heard, stop = _watch(fake)
    fake.fail_wait(pynvml.NVML_ERROR_TIMEOUT)
    fake.xid(43)
    fake.ecc()
    assert heard.wait(2) == [(43, "xid"), (-1, "double-bit ECC error")]
    stop.set()
    probe.close()
    assert fake.sets[0].freed and not probe._xid_thread.is_alive()


def test_a_lost_gpu_is_reported_and_ends_the_watch(nvml):
    fake = nvml()
    probe, heard, stop = _watch(fake)
    fake.fail_wait(pynvml.NVML_ERROR_GPU_IS_LOST)
    assert heard.wait(1) == [(-1, "GPU is lost")]
    probe._xid_thread.join(5)
    assert not probe._xid_thread.is_alive() and fake.sets[0].freed
    stop.set()
    probe.close()


def test_repeated_wait_errors_end_the_watch_with_one_warning(nvml, caplog):
    caplog.set_level(logging.INFO, logger="worker.monitor")
    fake = nvml()
    probe, heard, stop = _watch(fake)
    for _ in range(3):
        fake.fail_wait(pynvml.NVML_ERROR_UNKNOWN)
    probe._xid_thread.join(10)
    assert not probe._xid_thread.is_alive() and fake.sets[0].freed
    assert heard.events == []
    assert sum("Xid watching off" in r.message for r in caplog.records) == 1
    stop.set()
    probe.close()


def test_registration_refused_everywhere_frees_the_set(nvml):
    fake = nvml(event_errors={u: pynvml.NVML_ERROR_NO_PERMISSION for u in UUIDS})
    probe = NvmlProbe()
    assert probe.watch_xids(Heard(), threading.Event()) is False
    assert fake.sets[0].freed
    probe.close()


def test_one_device_refusing_events_leaves_the_others_watched(nvml):
    fake = nvml(event_errors={UUIDS[0]: pynvml.NVML_ERROR_NOT_SUPPORTED})
    probe, heard, stop = _watch(fake)
    assert [d.uuid for d in fake.sets[0].devices] == UUIDS[1:]
    stop.set()
    probe.close()


def test_a_mig_slice_is_watched_through_its_gpu(nvml):
    fake = nvml(FakeDevice("GPU-aaa-111", migs=["MIG-s1-aaaa"]))
    probe, heard, stop = _watch(fake, visible="MIG-s1-aaaa")
    assert [d.uuid for d in fake.sets[0].devices] == ["GPU-aaa-111"]
    stop.set()
    probe.close()


def test_xid_classes():
    assert [classify_xid(x) for x in (13, 31, 43, 45, 68, 94, 109)] == ["replace"] * 7
    assert [classify_xid(x) for x in (63, 92)] == ["note"] * 2
    assert [classify_xid(x) for x in (48, 74, 79, 95, 119, 120)] == ["unhealthy"] * 6


# --- Xids and a real child ------------------------------------------------------------

def _events(h, n):
    assert h.sup.wait_until(lambda s: len(s.gpu_events) >= n, 30), h.sup.status.gpu_events
    return h.sup.status.gpu_events


def test_one_fault_replaces_the_child_once(nvml, harness):
    """The job fails with a sticky CUDA error (the child is replaced for it), then the
    driver's Xid for the same fault arrives: the fresh child, which has run nothing, keeps
    its place."""
    fake = nvml()
    h = harness("misbehave.py", probe=NvmlProbe(), gpus_per_child=0)     # one child
    first = h.run({"do": "ok"}).output["pid"]
    assert h.run({"do": "cuda_error"}).state is JobState.FAILED
    fresh = h.run({"do": "ok"}).output["pid"]
    assert fresh != first and h.sup.status.spawns == 2
    # A fresh child that has run no job yet: the same thing, before its first job.
    h.sup.refresh("test")
    h.sup.wait_until(lambda s: s.spawns == 3 and s.ready, 30)
    fake.xid(43)
    assert _events(h, 1)[-1] == ("Xid 43", "ignored: it belongs to a worker process "
                                           "already replaced")
    after = h.run({"do": "ok"})
    assert h.sup.status.spawns == 3 and after.output["calls"] == 1


def test_an_application_xid_after_jobs_replaces_the_child_and_94_is_one(nvml, harness):
    fake = nvml()
    h = harness("misbehave.py", probe=NvmlProbe(), gpus_per_child=0)     # one child
    pid = h.run({"do": "ok"}).output["pid"]
    fake.xid(94)                       # a contained ECC error: restart the application
    assert _events(h, 1)[-1] == ("Xid 94", "replace")
    assert h.run({"do": "ok"}).output["pid"] != pid
    assert h.sup.state is WorkerState.RUNNING
    fake.xid(63)                       # recorded by the driver: nothing to do
    assert _events(h, 2)[-1] == ("Xid 63", "noted")
    assert h.sup.state is WorkerState.RUNNING and h.sup.status.spawns == 2


def test_a_lost_gpu_makes_the_worker_unhealthy(nvml, harness):
    fake = nvml()
    h = harness("misbehave.py", probe=NvmlProbe())
    h.run({"do": "ok"})
    fake.fail_wait(pynvml.NVML_ERROR_GPU_IS_LOST)
    h.sup.wait_until(lambda s: s.state is WorkerState.BROKEN, 10)
    assert "GPU is lost" in h.sup.failure_message
    late = h.run({"do": "ok"})
    assert "GPU is unhealthy (GPU is lost)" in late.error


# --- the baseline after a child's exit ------------------------------------------------

class ReleasingProbe:
    """Device memory that the driver gives back only a few reads after the child that
    held it exited (reads with no child pid are the supervisor's spawn-time reads)."""

    def __init__(self):
        self.used_mb = 1000.0
        self.held_reads = 0              # spawn-time reads still answered with used_mb
        self.released_mb = 1000.0
        self.lock = threading.Lock()

    def read(self, child_pid=None) -> Reading:
        with self.lock:
            used = self.used_mb
            if child_pid is None and self.held_reads:
                self.held_reads -= 1
                if not self.held_reads:
                    self.used_mb = self.released_mb
        dev = DeviceReading(0, "GPU-test", "Releasing GPU", 16000.0, used, 16000.0 - used)
        return Reading("scripted", child_rss_mb=10.0, devices=[dev])


def test_the_next_child_starts_once_the_old_ones_memory_is_back(harness):
    probe = ReleasingProbe()
    h = harness("misbehave.py", probe=probe, max_vram="500")
    first = h.run({"do": "ok"}).output["pid"]
    assert h.sup.status.baseline_mb == 1000
    with probe.lock:
        probe.used_mb = 1700             # the child grew 700 MiB: over the limit
        probe.held_reads = 4             # and the driver is slow to take it back
    h.run({"do": "ok"})
    after = h.run({"do": "ok"})
    assert after.output["pid"] != first
    assert h.sup.status.baseline_mb == 1000     # not 1,700: the old child's memory
    assert probe.held_reads == 0


def test_memory_that_never_comes_back_becomes_the_baseline(harness, monkeypatch):
    monkeypatch.setattr(device_settle, "BOUND_S", 0.3)
    probe = ReleasingProbe()
    h = harness("misbehave.py", probe=probe, max_vram="500")
    h.run({"do": "ok"})
    with probe.lock:
        probe.used_mb = 1700
        probe.released_mb = 1700         # another process took it: never released
        probe.held_reads = 10**6
    h.run({"do": "ok"})
    after = h.run({"do": "ok"})
    assert after.state is JobState.COMPLETED and h.sup.status.baseline_mb == 1700


# --- CUDA and the forkserver ----------------------------------------------------------

def test_a_preload_asking_torch_about_cuda_leaves_children_usable(harness):
    """torch answers the preload through NVML (no CUDA state in the forkserver), and the
    child gets the variable back as the user set it (unset)."""
    h = harness("cuda_report.py", preload=("torch", "tests.handlers.preload_asks_cuda"))
    out = h.run({}, timeout=120).output
    assert out["forkserver_nvml_check"] == "1"
    assert out["nvml_check_now"] is None
    assert out["bad_fork"] is False


def test_a_forkserver_holding_cuda_fails_setup_in_one_line(harness):
    h = harness("cuda_report.py", preload=("torch", "tests.handlers.preload_cuda_state"))
    late = h.run({}, timeout=120)
    assert h.sup.state is WorkerState.SETUP_FAILED
    assert "initialised CUDA" in h.sup.failure_message
    assert "WORKER_START_METHOD=spawn" in h.sup.failure_message
    assert "Traceback" not in (late.error or "")


def test_torchs_cuda_version_is_read_without_importing_it(tmp_path):
    """What the GPU check compares with the driver's CUDA (a mismatch: torch would run on
    the CPU). A package stands in for torch here; it must never be imported."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('imported')\n")
    code = "from worker.child import gpu_check; print(gpu_check.torch_cuda())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT),
                                                         os.environ["PYTHONPATH"]])}
    for text, expected in [("cuda: Optional[str] = '13.0'", "(13, 0)"),
                           ("cuda = '12.8'", "(12, 8)"),
                           ("cuda: Optional[str] = None", "None")]:
        (fake / "version.py").write_text(f"__version__ = '2.13.0'\n{text}\ngit = 'x'\n")
        proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env)
        assert proc.stdout.strip() == expected, proc.stderr


def test_one_child_per_gpu_by_uuid_with_its_own_memory_reading(nvml, harness, tmp_path):
    """Three GPUs that NVML sees: three children by default, each given one GPU's UUID in
    its CUDA_VISIBLE_DEVICES, and /health reads each child's memory on its own GPU."""
    nvml()
    h = harness("children.py", probe=NvmlProbe())
    assert [c.devices for c in h.sup.status.children] == [(u,) for u in UUIDS]
    go = tmp_path / "go"
    jobs = [h.submit({"wait": str(go)}) for _ in UUIDS]
    assert h.sup.wait_until(lambda s: len(s.running) == 3, 30)
    go.touch()
    seen = sorted(r.output["devices"] for r in h.listener.wait(jobs).values())
    assert seen == sorted(UUIDS)
    children = h.sup.snapshot()["children"]
    assert [[d["uuid"] for d in c["memory"]["devices"]] for c in children] == \
        [[u] for u in UUIDS]


def test_metrics_show_each_gpu_under_the_child_that_holds_it(nvml, harness):
    """The metrics collector reads NVML at scrape time: one series per GPU, labelled with
    the child that holds it and its UUID, parsed with the Prometheus text parser."""
    from prometheus_client.parser import text_string_to_metric_families
    fake = nvml()
    fake.devices[1].used_mb = 1234.0
    h = harness("children.py", probe=NvmlProbe())
    assert h.sup.wait_until(lambda s: all(c.ready for c in s.children), 30)
    series = {(s.name, s.labels.get("child"), s.labels.get("gpu")): s.value
              for f in text_string_to_metric_families(h.sup.metrics.text().decode())
              for s in f.samples}
    used = {k: v for k, v in series.items() if k[0] == "gpu_worker_gpu_memory_used_bytes"}
    assert used == {("gpu_worker_gpu_memory_used_bytes", str(i), u):
                    (1234.0 if i == 1 else 500.0) * 2**20 for i, u in enumerate(UUIDS)}
    assert {k[1] for k in series if k[0] == "gpu_worker_gpu_utilization_ratio"} == \
        {"0", "1", "2"}
    assert all(series[("gpu_worker_child_up", str(i), None)] == 1 for i in range(3))
