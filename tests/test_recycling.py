"""Refresh and recycling: a fresh child, new module state, never during a job."""
from tests.support import gone
from worker.jobs import JobState


def _wait_new_child(h, n):
    assert h.sup.wait_until(lambda s: s.spawns >= n and s.child_state is not None
                            and s.child_state.value == "ready", 30)


def test_refresh_worker_gives_new_module_state(harness):
    h = harness("misbehave.py")
    a = h.run({"do": "ok"})
    b = h.run({"do": "ok"})
    assert (a.output["calls"], b.output["calls"]) == (1, 2)
    r = h.run({"do": "refresh"})
    assert r.state is JobState.COMPLETED and r.refresh
    c = h.run({"do": "ok"})
    assert c.output["calls"] == 1
    assert c.output["pid"] != a.output["pid"]
    assert gone(a.output["pid"])


def test_refresh_worker_setting_replaces_the_child_after_every_job(harness):
    h = harness("misbehave.py", refresh_worker=True)
    pids = [h.run({"do": "ok"}).output["pid"] for _ in range(3)]
    assert len(set(pids)) == 3


def test_max_jobs_per_child(harness):
    h = harness("misbehave.py", max_jobs_per_child=2)
    pids = [h.run({"do": "ok"}).output["pid"] for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_resident_memory_limit_recycles_between_jobs(harness):
    h = harness("misbehave.py", max_rss_mb=150)
    small = h.run({"do": "grow", "mb": 10})
    big = h.run({"do": "grow", "mb": 200})
    assert big.state is JobState.COMPLETED          # never interrupted
    assert big.output["pid"] == small.output["pid"]
    after = h.run({"do": "ok"})
    assert after.output["pid"] != big.output["pid"]
    assert after.output["calls"] == 1


def test_refresh_waits_for_running_jobs(harness):
    h = harness("conc_async.py")
    ids = [h.submit({"delay": 0.5}) for _ in range(3)]
    h.sup.refresh("test")
    results = h.listener.wait(ids)
    assert all(r.state is JobState.COMPLETED for r in results.values())
    _wait_new_child(h, 2)


def test_child_output_is_captured_with_the_job_id(harness):
    lines = []
    h = harness("misbehave.py", sink=lambda stream, line, ids: lines.append((stream, line, ids)))
    job = h.submit({"do": "print"}, job_id="print-job")
    assert h.listener.wait([job])[job].output == "printed"
    h.sup.wait_until(lambda s: len(lines) >= 5, 5)
    got = {(s, l) for s, l, ids in lines if ids == ("print-job",)}
    assert ("stdout", "from print") in got
    assert ("stdout", "from fd 1") in got
    assert ("stdout", "from C puts") in got
    assert ("stderr", "to stderr") in got
    assert ("stdout", "from a subprocess") in got
