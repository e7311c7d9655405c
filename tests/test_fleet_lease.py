"""A worker never fences itself: when it stalls past its lease and its own take thread
reclaims the entry of a run it still holds, the run keeps its fence and no delivery is
counted — whatever the order of that reclaim and the lease keeper's renewal."""
import json
import signal
import time

import pytest

from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, runs, start_worker
from tests.support import FAST, HANDLERS
from worker.config import Settings
from worker.fleet.keys import GROUP, Keys
from worker.sources.redis_queue import RedisQueueSource
from worker.targets import ScriptTarget

pytestmark = [pytest.mark.skipif(REDIS is None, reason=NO_REDIS), pytest.mark.slow]


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def taken(tmp_path, monkeypatch):
    """A real source, child and server; `take(job_id, input)` queues a job and has the
    source take it as its take thread would: (source, client, entry). The writer starts
    only when the test says so."""
    monkeypatch.chdir(tmp_path)                 # the handler's runs.log
    srv = RedisServer(tmp_path / "redis")
    made = []

    def take(job_id, inp):
        settings = Settings(**FAST, queue_url=srv.url, queue_endpoint="ep",
                            queue_lease_s=30.0)
        source = RedisQueueSource(settings, ScriptTarget(str(HANDLERS / "fleet_jobs.py"), []))
        made.append(source)
        k, r = source.keys, srv.client()
        r.xgroup_create(k.stream, GROUP, id="0", mkstream=True)
        source.host.start()
        source.scripts.submit(keys=[k.job(job_id), k.stream, k.idem("-")],
                              args=[job_id, json.dumps({"id": job_id, "input": inp}), "",
                                    "0", 60])
        [(_, [(entry, fields)])] = r.xreadgroup(GROUP, source.consumer, {k.stream: ">"},
                                                count=1)
        source._take_entry(entry, fields)
        return source, r, entry
    yield take
    for source in made:
        source.sup.stop()
        source.sup.join(30)
    srv.close()


def reclaim_own(source, r, entry) -> None:
    """The stall: the entry looks idle past the lease, and this worker's reclaim takes
    it and hands it to its own take step."""
    r.xclaim(source.keys.stream, GROUP, source.consumer, 0, [entry], idle=10**7, justid=True)
    _, reclaimed = source._reclaim("0-0", 1)
    assert [e for e, _ in reclaimed] == [entry]
    for e, f in reclaimed:
        source._take_entry(e, f)


def test_an_own_reclaim_between_the_keepers_read_and_its_renewal_keeps_the_run(
        taken, tmp_path):
    """The interleaving, step by step: the keeper read the run's fence; the take thread
    reclaims the entry (it looked idle past the lease); the keeper renews with what it
    read."""
    source, r, entry = taken("job-1", {"do": "sleep", "seconds": 5})
    k = source.keys
    source.writer.start()
    wait_for(lambda: runs(tmp_path).get("job-1") == 1)
    read_by_keeper = source.held_jobs["job-1"].fence
    reclaim_own(source, r, entry)
    held = source.scripts.renew(keys=[k.job("job-1"), k.stream],
                                args=[GROUP, source.consumer, entry, read_by_keeper])
    assert held == 1, "the keeper's renewal found its own run fenced"
    source._keep()
    assert not source.held_jobs["job-1"].fenced
    wait_for(lambda: r.hget(k.job("job-1"), "status") == b"COMPLETED")
    assert int(r.hget(k.job("job-1"), "deliveries")) == 1
    assert runs(tmp_path)["job-1"] == 1


def test_an_own_reclaim_while_the_final_record_is_on_its_way_keeps_the_run(taken, tmp_path):
    """The run has ended; its final write waits (the writer has not started): the
    worker's own reclaim finds it finishing, starts nothing, counts nothing; the final
    record is then written under the run's fence."""
    source, r, entry = taken("job-2", {})
    k = source.keys
    wait_for(lambda: "job-2" in source.finishing)
    reclaim_own(source, r, entry)
    assert int(r.hget(k.job("job-2"), "deliveries")) == 1 and not source.held_jobs
    source.writer.start()
    wait_for(lambda: r.hget(k.job("job-2"), "status") == b"COMPLETED")
    assert int(r.hget(k.job("job-2"), "deliveries")) == 1
    assert runs(tmp_path)["job-2"] == 1


def test_a_lone_worker_stalled_past_its_lease_completes_its_job_once(tmp_path):
    """SIGSTOP for twice the lease, five times over: each job completes with one delivery
    and one run, and the worker never says it lost a lease."""
    srv = RedisServer(tmp_path / "redis")
    gw = w = None
    try:
        gw = Gateway(srv, "ep", tmp_path)
        w = start_worker(srv, "ep", tmp_path, WORKER_QUEUE_LEASE_S="1.5",
                         WORKER_CHILDREN="2")
        assert gw.post("/runsync", {"input": {}}).json()["status"] == "COMPLETED"
        r = srv.client()
        for _ in range(5):
            job = gw.post("/run", {"input": {"do": "sleep", "seconds": 1}}).json()["id"]
            gw.until(job, lambda s: s["status"] == "IN_PROGRESS")
            w.proc.send_signal(signal.SIGSTOP)
            time.sleep(3)                       # the stall itself is the event under test
            w.proc.send_signal(signal.SIGCONT)
            done = gw.until(job, lambda s: s["status"] in ("COMPLETED", "FAILED"))
            assert done["status"] == "COMPLETED", done
            assert int(r.hget(Keys("ep").job(job), "deliveries")) == 1
            assert runs(tmp_path)[job] == 1
        assert "lost the job's lease" not in w.text()
    finally:
        for p in (w, gw):
            if p is not None:
                p.kill()
        srv.close()
