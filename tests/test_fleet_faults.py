"""Faults on a real Redis endpoint, counted: every job ends with exactly one final record
(the endpoint's counts hash is incremented once per final record) and none is lost —
a worker killed mid-job, a worker cut off past its lease, SIGTERM, a poison job, Redis
restarted or killed (with AOF) and out of reach for 10 s, a gateway killed mid-request."""
import signal
import threading
import time

import pytest
import requests

from tests.fleet_support import (NO_REDIS, REDIS, Gateway, RedisServer, finals, runs,
                                 start_worker)
from worker.fleet.keys import Keys

pytestmark = [pytest.mark.skipif(REDIS is None, reason=NO_REDIS), pytest.mark.slow]
LEASE = {"WORKER_QUEUE_LEASE_S": "2"}


@pytest.fixture
def made(tmp_path):
    procs, servers = [], []

    class Made:
        folder = tmp_path

        def server(self, **kw):
            servers.append(RedisServer(tmp_path / f"redis{len(servers)}", **kw))
            return servers[-1]

        def gateway(self, srv, endpoint="ep", **env):
            procs.append(Gateway(srv, endpoint, tmp_path, name=f"gw{len(procs)}", **env))
            return procs[-1]

        def worker(self, srv, endpoint="ep", **env):
            procs.append(start_worker(srv, endpoint, tmp_path, name=f"w{len(procs)}",
                                      **{**LEASE, **env}))
            return procs[-1]

    yield Made()
    for p in procs:
        if p.proc.poll() is None:
            p.kill()
    for s in servers:
        s.close()


def owner_pid(status: dict) -> int:
    return int(status["workerId"].split("-")[-2])


def test_a_killed_worker_s_job_completes_once_on_another(made):
    srv = made.server()
    gw = made.gateway(srv)
    workers = [made.worker(srv), made.worker(srv)]
    gw.post("/runsync", {"input": {}})
    job = gw.post("/run", {"input": {"do": "sleep", "seconds": 1.5}}).json()["id"]
    first = gw.until(job, lambda s: s["status"] == "IN_PROGRESS")
    victim = next(w for w in workers if w.proc.pid == owner_pid(first))
    victim.kill()
    done = gw.until(job, lambda s: s["status"] == "COMPLETED", timeout=60)
    assert owner_pid(done) != victim.proc.pid
    assert runs(made.folder)[job] == 2          # the killed run, and the one that ended
    assert finals(srv, "ep") == 2               # the warm-up job and this one: once each


def test_sigterm_releases_a_running_job_to_another_worker_at_once(made):
    """The lease is a minute; the released job starts on the other worker at once."""
    srv = made.server()
    gw = made.gateway(srv)
    slow = {"WORKER_QUEUE_LEASE_S": "60", "WORKER_SHUTDOWN_GRACE": "0.5"}
    workers = [made.worker(srv, **slow), made.worker(srv, **slow)]
    gw.post("/runsync", {"input": {}})
    job = gw.post("/run", {"input": {"do": "sleep", "seconds": 3}}).json()["id"]
    first = gw.until(job, lambda s: s["status"] == "IN_PROGRESS")
    leaving = next(w for w in workers if w.proc.pid == owner_pid(first))
    t0 = time.monotonic()
    assert leaving.stop() == 0, leaving.text()
    done = gw.until(job, lambda s: s["status"] == "COMPLETED", timeout=30)
    assert time.monotonic() - t0 < 30 and owner_pid(done) != leaving.proc.pid
    assert "released to another worker" in leaving.text()
    assert finals(srv, "ep") == 2 and runs(made.folder)[job] == 2


def test_a_worker_cut_off_past_its_lease_is_fenced(made):
    """SIGSTOP stands for a partition: the job is taken over; when the first worker comes
    back it learns it lost the lease and its run reports nothing."""
    srv = made.server()
    gw = made.gateway(srv)
    workers = [made.worker(srv), made.worker(srv)]
    gw.post("/runsync", {"input": {}})
    job = gw.post("/run", {"input": {"do": "sleep", "seconds": 4}}).json()["id"]
    first = gw.until(job, lambda s: s["status"] == "IN_PROGRESS")
    cut = next(w for w in workers if w.proc.pid == owner_pid(first))
    cut.proc.send_signal(signal.SIGSTOP)
    try:
        gw.until(job, lambda s: s.get("workerId") != first["workerId"], timeout=30)
    finally:
        cut.proc.send_signal(signal.SIGCONT)
    done = gw.until(job, lambda s: s["status"] == "COMPLETED", timeout=30)
    assert owner_pid(done) != cut.proc.pid
    deadline = time.monotonic() + 20
    while "another worker" not in cut.text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "another worker" in cut.text()
    assert runs(made.folder)[job] == 2 and finals(srv, "ep") == 2
    assert gw.post("/runsync", {"input": {"echo": 1}}).json()["status"] == "COMPLETED"


def test_a_poison_job_goes_to_the_dead_letter_stream(made):
    srv = made.server()
    gw = made.gateway(srv)
    env = {"WORKER_QUEUE_LEASE_S": "1.5", "WORKER_QUEUE_MAX_DELIVERIES": "2"}
    for _ in range(3):
        made.worker(srv, **env)
    gw.post("/runsync", {"input": {}})
    job = gw.post("/run", {"input": {"do": "kill_worker"}}).json()["id"]
    dead = gw.until(job, lambda s: s["status"] == "FAILED", timeout=90)
    assert "delivered 3 times" in dead["error"] and "dead-letter" in dead["error"]
    letters = srv.client().xrange(Keys("ep").dead)
    assert [f[b"id"].decode() for _, f in letters] == [job]
    assert b"kill_worker" in letters[0][1][b"job"]
    assert runs(made.folder)[job] == 2
    assert gw.post("/runsync", {"input": {"echo": 2}}).json()["status"] == "COMPLETED"
    assert gw.get("/health").json()["queue"]["deadLetters"] == 1


def _submit_all(gw, n: int) -> list:
    return [gw.post("/run", {"input": {"do": "sleep", "seconds": 0.2}}).json()["id"]
            for _ in range(n)]


def _all_completed(gw, ids, timeout=120) -> None:
    for job_id in ids:
        assert gw.until(job_id, lambda s: s["status"] in ("COMPLETED", "FAILED", "CANCELLED",
                                                          "TIMED_OUT"),
                        timeout=timeout)["status"] == "COMPLETED"


def test_redis_shut_down_and_restarted_mid_run_loses_nothing(made):
    srv = made.server(aof="everysec")
    gw = made.gateway(srv)
    made.worker(srv)
    made.worker(srv)
    ids = _submit_all(gw, 20)
    while finals(srv, "ep") < 4:
        time.sleep(0.05)
    srv.shutdown()
    srv.start()
    _all_completed(gw, ids)
    assert finals(srv, "ep") == 20
    assert set(runs(made.folder)) == set(ids)


def test_redis_killed_and_away_for_10s_loses_nothing_and_the_gateway_says_503(made):
    srv = made.server(aof="always")
    gw = made.gateway(srv)
    workers = [made.worker(srv), made.worker(srv)]
    ids = _submit_all(gw, 20)
    while finals(srv, "ep") < 4:
        time.sleep(0.05)
    srv.kill()
    away = time.monotonic()
    answers = []
    while time.monotonic() - away < 10:
        r = gw.post("/run", {"input": {}}, timeout=30)
        answers.append((r.status_code, r.headers.get("Retry-After")))
        time.sleep(0.5)
    assert {a for a in answers} == {(503, "2")}
    srv.start()
    _all_completed(gw, ids)
    assert finals(srv, "ep") == 20
    assert all(w.proc.poll() is None for w in workers)
    assert gw.post("/runsync", {"input": {"echo": 3}}).json()["status"] == "COMPLETED"


def test_a_killed_gateway_and_a_retry_with_the_same_key_elsewhere(made):
    srv = made.server()
    gw1, gw2 = made.gateway(srv), made.gateway(srv)
    made.worker(srv)
    gw2.post("/runsync", {"input": {}})
    key = {"Idempotency-Key": "client-retry-1"}
    failed = []

    def first_try():
        try:
            gw1.post("/runsync", {"input": {"do": "sleep", "seconds": 1.5}}, headers=key)
        except requests.ConnectionError as exc:
            failed.append(exc)
    t = threading.Thread(target=first_try)
    t.start()
    deadline = time.monotonic() + 30
    while gw2.get("/health").json()["jobs"]["inProgress"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gw1.kill()
    t.join(30)
    assert failed                               # the client lost its answer
    retry = gw2.post("/runsync", {"input": {"do": "sleep", "seconds": 1.5}},
                     headers=key).json()
    assert retry["status"] == "COMPLETED"
    assert runs(made.folder)[retry["id"]] == 1 and finals(srv, "ep") == 2
    assert srv.client().xlen(Keys("ep").stream) == 0


def test_a_server_restarted_without_persistence_gets_its_groups_back(made):
    srv = made.server()
    gw = made.gateway(srv)
    w = made.worker(srv)
    assert gw.post("/runsync", {"input": {}}).json()["status"] == "COMPLETED"
    srv.kill()
    srv.start()                                  # empty: no stream, no group
    health = gw.get("/health")
    assert health.status_code == 200 and health.json()["jobs"]["inQueue"] == 0
    done = gw.post("/runsync", {"input": {"echo": "after"}}, timeout=60).json()
    assert done["status"] == "COMPLETED" and done["output"]["echo"] == "after"
    assert "making them again" in w.text()


def test_a_webhook_survives_the_worker_that_was_sending_it(made):
    """The outbox entry is written with the final record: the worker dies mid-post, and
    another worker's sender delivers it after the lease."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    got, first_in, release = [], threading.Event(), threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got.append(body)
            if len(got) == 1:            # the first sender never hears back
                first_in.set()
                release.wait(60)
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        srv = made.server()
        gw = made.gateway(srv)
        first = made.worker(srv, WORKER_WEBHOOK_ALLOW="127.0.0.1")
        job = gw.post("/run", {"input": {"echo": "hook"}, "webhook": url}).json()["id"]
        assert first_in.wait(60)
        first.kill()                                  # mid-post: its entry stays pending
        made.worker(srv, WORKER_WEBHOOK_ALLOW="127.0.0.1")
        deadline = time.monotonic() + 60
        while len(got) < 2:
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        assert got[1]["id"] == job and got[1]["status"] == "COMPLETED"
        while srv.client().xlen(Keys("ep").hooks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.client().xlen(Keys("ep").hooks) == 0 and finals(srv, "ep") == 1
    finally:
        release.set()
        receiver.shutdown()


def test_a_full_server_refuses_new_jobs_with_503_and_the_workers_go_on(made):
    """maxmemory reached under noeviction: the gateway says so (503, Retry-After), nothing
    is half written, and once there is room again jobs run."""
    srv = made.server()
    gw = made.gateway(srv)
    made.worker(srv)
    assert gw.post("/runsync", {"input": {}}).json()["status"] == "COMPLETED"
    r = srv.client()
    r.config_set("maxmemory", 1)
    refused = gw.post("/run", {"input": {"echo": "x" * 1000}})
    assert refused.status_code == 503 and "OutOfMemoryError" in refused.json()["error"]
    assert refused.headers["Retry-After"] == "2"
    r.config_set("maxmemory", 0)
    assert gw.post("/runsync", {"input": {"echo": 2}}).json()["status"] == "COMPLETED"
    assert finals(srv, "ep") == 2 and r.xlen(Keys("ep").stream) == 0    # nothing half made


def test_a_final_record_waits_out_a_full_server_and_is_written(made):
    """The server fills up while a job runs: its final record waits (it is not dropped)
    and is written once there is room."""
    srv = made.server()
    gw = made.gateway(srv)
    w = made.worker(srv)
    job = gw.post("/run", {"input": {"do": "sleep", "seconds": 1}}).json()["id"]
    gw.until(job, lambda s: s["status"] == "IN_PROGRESS")
    r = srv.client()
    r.config_set("maxmemory", 1)
    deadline = time.monotonic() + 30
    while "cannot take writes now" not in w.text():
        assert time.monotonic() < deadline, w.text()
        time.sleep(0.05)
    r.config_set("maxmemory", 0)
    assert gw.until(job, lambda s: s["status"] == "COMPLETED")["status"] == "COMPLETED"
    assert finals(srv, "ep") == 1 and runs(made.folder)[job] == 1
