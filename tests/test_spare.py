"""A spare child per slot with real processes (WORKER_SPARE=on): a refresh or a crash
hands the next job to the spare, which is as fresh as a new child (module state, the
RNG's next draw, what the module read at import) and was warmed before Ready; a cold
refresh drops it; warmup that fails is a setup failure."""
import time

import pytest

from tests.support import FAST, HANDLERS, Collector
from worker.config import Settings
from worker.jobs import JobState
from worker.parent.supervisor import Supervisor
from worker.targets import ScriptTarget

STATE = ScriptTarget(str(HANDLERS / "spare_state.py"), [])


@pytest.fixture
def sup(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)            # each child starts in the parent's directory
    (tmp_path / "config.txt").write_text("v1")
    made = []

    def make(**settings):
        s = Supervisor(Settings(**{**FAST, "spare": "on", **settings}), STATE).start()
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()
        assert s.join(30)


def spare_ready(s):
    return s.wait_until(lambda st: (st.children[0].spare or {}).get("state") == "ready", 60)


def run(s, listener, job_id, **inp):
    s.submit({"id": job_id, "input": inp}, listener)
    result = listener.wait([job_id])[job_id]
    assert result.state is JobState.COMPLETED, result
    return result.body["output"]


def test_a_refresh_hands_the_next_job_to_a_fresh_warmed_spare(sup):
    s = sup()
    listener = Collector()
    assert s.wait_ready(60) and spare_ready(s)
    spare_pid = s.status.children[0].spare["pid"]
    first = run(s, listener, "a", refresh=True)
    assert first["calls"] == 1 and first["warmed"] and first["config"] == "v1"
    second = run(s, listener, "b")
    assert second["pid"] == spare_pid != first["pid"]
    assert second["calls"] == 1 and second["warmed"]     # fresh module state, warmed
    assert second["draw"] == first["draw"]               # the spare never drew: fresh RNG
    assert spare_ready(s)                                # and a new spare is built
    view = s.snapshot()["children"][0]["spare"]
    assert view["promotions"] == 1 and view["pid"] not in (first["pid"], second["pid"])
    assert b'gpu_worker_spare_promotions_total{child="0"} 1.0' in s.metrics.text()


def test_a_crash_hands_the_next_job_to_the_spare(sup):
    s = sup(job_max_crashes=1)
    listener = Collector()
    assert s.wait_ready(60) and spare_ready(s)
    spare_pid = s.status.children[0].spare["pid"]
    s.submit({"id": "crash", "input": {"exit": 7}}, listener)
    s.submit({"id": "next", "input": {}}, listener)
    results = listener.wait(["crash", "next"])
    assert results["crash"].state is JobState.FAILED
    assert "exited with code 7" in results["crash"].error_info()["error_message"]
    assert results["next"].body["output"]["pid"] == spare_pid
    assert listener.counts == {"crash": 1, "next": 1}


def test_a_plain_refresh_serves_what_the_spare_read_a_cold_one_reads_it_again(sup):
    s = sup()
    listener = Collector()
    assert s.wait_ready(60) and spare_ready(s)
    run(s, listener, "w1", write="v2", refresh=True)     # the spare read v1 before
    assert run(s, listener, "r1")["config"] == "v1"
    assert spare_ready(s)
    run(s, listener, "w2", write="v3", refresh="cold")   # the spare is dropped
    after = run(s, listener, "r2")
    assert after["config"] == "v3" and after["calls"] == 1


def test_a_warmup_that_raises_is_a_setup_failure(sup, tmp_path):
    (tmp_path / "warmup-fails").write_text("")
    s = sup(spare="off")
    assert not s.wait_ready(60)
    assert s.status.state.value == "setup_failed"
    assert "warm-up failed on purpose" in s.failure_message


def test_a_module_that_binds_a_fixed_port_keeps_no_spare_and_serves(monkeypatch, tmp_path,
                                                                     caplog):
    import logging
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "port.txt").write_text(str(port))
    target = ScriptTarget(str(HANDLERS / "fixed_port.py"), [])
    with caplog.at_level(logging.WARNING, logger="worker"):
        s = Supervisor(Settings(**{**FAST, "spare": "on"}), target).start()
        try:
            assert s.wait_until(lambda st: (st.children[0].spare or {}).get("off"), 60)
            spare = s.snapshot()["children"][0]["spare"]
            assert "Address already in use" in spare["off"] and spare["failures"] == 1
            listener = Collector()
            s.submit({"id": "a", "input": {}}, listener)
            assert listener.wait(["a"])["a"].state is JobState.COMPLETED
            assert s.status.state.value == "running" and s.status.children[0].out is None
        finally:
            s.stop()
            assert s.join(30)
    assert len([r for r in caplog.records if "no spare child from now on" in
                r.getMessage()]) == 1


def test_a_spares_output_is_not_tagged_with_the_active_childs_job(monkeypatch, tmp_path):
    lines = []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.txt").write_text("v1")
    (tmp_path / "spare-speaks").write_text("")       # the spare speaks during the job
    s = Supervisor(Settings(**{**FAST, "spare": "on"}), STATE,
                   output_sink=lambda stream, line, ids: lines.append((line, ids))).start()
    try:
        assert s.wait_ready(60)
        listener = Collector()
        first = s.status.child_pid
        s.submit({"id": "busy", "input": {"wait_for_spare": True}}, listener)
        assert listener.wait(["busy"])["busy"].state is JobState.COMPLETED
        # the spare's line comes on its own pipe, which a busy machine may read after the
        # job's result: wait for it
        deadline = time.monotonic() + 30
        while not any(line.startswith("spare ") for line, _ in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.01)
        spoken = [ids for line, ids in lines if line.startswith("spare ")]
        assert spoken == [()], lines           # during job "busy", in another process
        assert s.status.child_pid == first
    finally:
        s.stop()
        assert s.join(30)
