"""Several children in one worker (WORKER_CHILDREN, WORKER_GPUS_PER_CHILD), with real
processes on the CPU: jobs go to whichever child is free, each runs once, and what happens
in one child (a crash, a timeout, a cancel, a refresh, a setup failure) leaves the jobs in
the others alone. Handlers hold a job until the test creates a file, so "at the same
time" is an event the test waits for, not a matter of timing."""
import os

import pytest

from worker.jobs import JobState, Reason

from .support import harness_fixture

harness = pytest.fixture(harness_fixture)


def hold_one(h, go):
    """A job held in one child until `go` exists: (its id, that child's pid)."""
    held = h.submit({"wait": str(go)})
    running_in_children(h, 1)
    return held, next(c.pid for c in h.sup.status.children if c.running)


def running_in_children(h, count):
    """Wait until `count` jobs run in the children, and return the status."""
    assert h.sup.wait_until(lambda s: len(s.running) == count, 30), h.sup.status
    return h.sup.status


def test_three_children_run_three_jobs_at_once_each_once(harness, tmp_path):
    h = harness("children.py", children=3)
    go = tmp_path / "go"
    held = [h.submit({"wait": str(go)}) for _ in range(3)]
    status = running_in_children(h, 3)        # three inline children: one job each
    assert sorted(c.running for c in status.children) == sorted((j,) for j in held)
    more = [h.submit({}) for _ in range(6)]
    go.touch()
    results = h.listener.wait(held + more)
    assert all(r.state is JobState.COMPLETED for r in results.values())
    assert all(h.listener.counts[j] == 1 for j in held + more)
    assert len({results[j].output["pid"] for j in held}) == 3
    assert {results[j].output["child"] for j in held} == {"0", "1", "2"}
    assert h.sup.status.restarts == 0 and len(h.sup.status.children) == 3


def test_each_child_sees_its_slice_of_cuda_visible_devices(harness, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    h = harness("children.py", gpus_per_child=2)
    assert [c.devices for c in h.sup.status.children] == [("0", "1"), ("2", "3")]
    go = tmp_path / "go"
    jobs = [h.submit({"wait": str(go)}) for _ in range(2)]
    running_in_children(h, 2)
    go.touch()
    seen = {r.output["child"]: r.output["devices"] for r in h.listener.wait(jobs).values()}
    assert seen == {"0": "0,1", "1": "2,3"}


def test_a_crash_in_one_child_leaves_the_other_childs_job_alone(harness, tmp_path):
    h = harness("children.py", children=2)
    go = tmp_path / "go"
    held, held_pid = hold_one(h, go)
    crash = h.run({"crash": True})
    assert crash.state is JobState.FAILED and crash.reason is Reason.WORKER_LOST
    after = h.run({})                     # the crashed slot has a fresh child
    assert after.state is JobState.COMPLETED and after.output["pid"] != held_pid
    go.touch()
    kept = h.listener.wait([held])[held]
    assert kept.state is JobState.COMPLETED and kept.output["pid"] == held_pid
    assert h.sup.status.restarts == 1 and h.listener.counts[held] == 1


def test_a_timeout_in_one_child_stops_that_child_only(harness, tmp_path):
    h = harness("children.py", children=2)
    go = tmp_path / "go"
    held, held_pid = hold_one(h, go)
    late = h.run({"sleep": 60}, policy={"executionTimeout": 1000})
    assert late.state is JobState.TIMED_OUT
    go.touch()
    kept = h.listener.wait([held])[held]
    assert kept.state is JobState.COMPLETED and kept.output["pid"] == held_pid


def test_cancel_reaches_the_child_that_runs_the_job(harness, tmp_path):
    h = harness("children.py", children=2)
    go = tmp_path / "go"
    keep, drop = h.submit({"wait": str(go)}), h.submit({"wait": str(go)})
    status = running_in_children(h, 2)
    pids = {c.running[0]: c.pid for c in status.children}
    h.sup.cancel(drop)
    assert h.listener.wait([drop])[drop].state is JobState.CANCELLED
    # The cancelled job's child is replaced (an inline job cannot be stopped otherwise).
    assert h.sup.wait_until(lambda s: pids[drop] not in [c.pid for c in s.children], 30)
    go.touch()
    kept = h.listener.wait([keep])[keep]
    assert kept.state is JobState.COMPLETED and kept.output["pid"] == pids[keep]


def test_refresh_worker_replaces_only_the_child_that_asked(harness, tmp_path):
    h = harness("children.py", children=2)
    go = tmp_path / "go"
    held, held_pid = hold_one(h, go)
    asked = h.run({"refresh": True})
    assert asked.state is JobState.COMPLETED and asked.refresh
    assert h.sup.wait_until(lambda s: asked.output["pid"] not in [c.pid for c in s.children]
                            and all(c.state is not None for c in s.children), 30)
    go.touch()
    kept = h.listener.wait([held])[held]
    assert kept.output["pid"] == held_pid and kept.output["jobs"] == 1
    fresh = h.run({})
    assert fresh.output["pid"] != asked.output["pid"]


def test_a_child_that_cannot_start_leaves_the_other_working(harness):
    h = harness("children.py", argv=["--fail-setup-in", "1"], children=2, restart_limit=2)
    # Out for good: tried again (restart_limit times in a row) once child 0 was ready.
    assert h.sup.wait_until(lambda s: s.ready and s.degraded and s.children[1].spawns >= 2,
                            60), h.sup.status
    status = h.sup.status
    assert status.children[1].out and "this child cannot start" in status.children[1].out
    assert status.ready and status.ping_code() == 200
    results = [h.run({}) for _ in range(3)]
    assert all(r.state is JobState.COMPLETED and r.output["child"] == "0" for r in results)
    health = h.sup.snapshot()
    assert health["degraded"] and health["children"][1]["state"] == "out"


def test_every_child_failing_setup_fails_the_worker(harness):
    h = harness("children.py", argv=["--fail-setup-in", "0"], children=1)
    assert h.sup.wait_until(lambda s: s.state.value == "setup_failed", 60)
    h2 = harness("raise_at_import.py", children=2)
    assert h2.sup.wait_until(lambda s: s.state.value == "setup_failed", 60), h2.sup.status
    assert h2.run({}).reason is Reason.REFUSED


def test_shutdown_drains_every_child_within_the_grace(harness, tmp_path):
    h = harness("children.py", children=2)
    go = tmp_path / "go"
    jobs = [h.submit({"wait": str(go)}) for _ in range(2)]
    status = running_in_children(h, 2)
    pids = [c.pid for c in status.children]
    h.sup.stop(grace=30)
    late = h.submit({})
    assert h.listener.wait([late])[late].reason is Reason.REFUSED
    go.touch()
    results = h.listener.wait(jobs)
    assert all(r.state is JobState.COMPLETED for r in results.values())
    assert h.sup.join(30)
    assert all(c.pid is None for c in h.sup.status.children)
    assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_local_api_health_describes_every_child(server):
    api = server("children.py", WORKER_CHILDREN="2")
    assert api.post("/runsync", {"input": {}}).json()["status"] == "COMPLETED"
    health = api.get("/health").json()
    children = health["worker"]["children"]
    assert [c["slot"] for c in children] == [0, 1]
    assert all(c["state"] in ("ready", "busy", "starting") and c["pid"] for c in children)
    assert health["worker"]["degraded"] is False


def test_the_queue_takes_as_many_jobs_as_the_children_have_room_for(fake, start, tmp_path):
    w = start("children.py", WORKER_CHILDREN="3")
    pids = set()
    for round in ("a", "b"):
        go = tmp_path / f"go-{round}"
        ids = [f"{round}{i}" for i in range(3)]
        fake.add_jobs([{"id": i, "input": {"wait": str(go)}} for i in ids])
        # All three are taken while none can finish: the worker had room for three.
        assert fake.wait_for(lambda q: set(ids) <= {j for _, taken in q.takes for j in taken})
        go.touch()
        finals = fake.wait_final(ids)
        pids |= {finals[i]["output"]["pid"] for i in ids}
        assert len({finals[i]["output"]["pid"] for i in ids}) == 3
    # More than one job at a time came in one take: the batch take (job-take-batch).
    assert all("batch_size" in q for q, taken in fake.takes if len(taken) > 1)
    assert len(pids) == 3             # the same three children, no restart
    assert w.stop() == 0
    assert all(len(fake.finals[i]) == 1 for i in fake.finals)


def test_the_one_shot_test_starts_one_child_whatever_worker_children_says():
    from .support import HANDLERS, PYTHON, oneshot_body, run_cli
    out = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "children.py"), "--test_input",
                   '{"input": {}}'], env={"WORKER_CHILDREN": "3", "WORKER_LOG_LEVEL": "INFO"})
    assert out.returncode == 0, out.stderr
    assert oneshot_body(out.stdout)["output"]["child"] == "0"
    assert "children:" not in out.stdout + out.stderr       # "3 children: ..." when several
