"""One endpoint on a real Redis server: the gateway's API, a queue worker, the official
client, webhooks from the outbox, idempotency, and the checks at the edges."""
import time

import pytest
import requests

from tests.fleet_support import (NO_REDIS, REDIS, Gateway, RedisServer, finals, runs,
                                 start_worker)
from tests.support import Hook
from worker.fleet.keys import GROUP, Keys

pytestmark = pytest.mark.skipif(REDIS is None, reason=NO_REDIS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    srv = RedisServer(d / "redis")
    gw = Gateway(srv, "main,gen", d, WORKER_WEBHOOK_ALLOW="127.0.0.1")
    w = start_worker(srv, "main", d, WORKER_WEBHOOK_ALLOW="127.0.0.1")
    g = start_worker(srv, "gen", d, handler="gen_sync.py", name="gen",
                     WORKER_RETURN_AGGREGATE_STREAM="true")
    gw.post("/runsync", {"input": {"echo": "warm"}})       # the worker is up
    yield srv, gw, d
    assert w.stop() == 0, w.text()
    assert g.stop() == 0, g.text()
    assert gw.stop() == 0, gw.text()
    srv.close()


def test_run_status_progress_and_runsync(fleet):
    srv, gw, d = fleet
    done = gw.post("/runsync", {"input": {"echo": 5}}).json()
    assert done["status"] == "COMPLETED" and done["output"]["echo"] == 5
    assert {"delayTime", "executionTime", "workerId"} <= set(done)
    job = gw.post("/v2/main/run", {"input": {"do": "progress", "seconds": 1}}).json()
    assert job["status"] == "IN_QUEUE"
    seen = gw.until(job["id"], lambda s: s.get("output") == {"stage": "halfway"})
    assert seen["status"] == "IN_PROGRESS"
    assert gw.until(job["id"], lambda s: s["status"] == "COMPLETED")["output"]["echo"] is None
    failed = gw.post("/runsync", {"input": {"do": "raise"}}).json()
    assert failed["status"] == "FAILED" and "bad input" in failed["error"]
    assert gw.get("/status/no-such-job").status_code == 404


def test_a_worker_takes_only_what_it_has_room_for(fleet):
    """Concurrency 1: one job pending with the worker, the rest wait in the stream for
    any worker (not read ahead by this one)."""
    srv, gw, d = fleet
    ids = [gw.post("/run", {"input": {"do": "sleep", "seconds": 0.6}}).json()["id"]
           for _ in range(3)]
    gw.until(ids[0], lambda s: s["status"] == "IN_PROGRESS")
    r = srv.client()
    group = [g for g in r.xinfo_groups(Keys("main").stream) if g["name"] == GROUP.encode()]
    assert group[0]["pending"] == 1 and group[0]["lag"] == 2
    health = gw.get("/health").json()
    assert health["jobs"]["inQueue"] == 2 and health["jobs"]["inProgress"] == 1
    assert health["workers"]["alive"] >= 1
    for job_id in ids:
        gw.until(job_id, lambda s: s["status"] == "COMPLETED")


def test_cancel_queued_and_running_jobs_and_purge(fleet):
    srv, gw, d = fleet
    running = gw.post("/run", {"input": {"do": "sleep", "seconds": 60}}).json()["id"]
    gw.until(running, lambda s: s["status"] == "IN_PROGRESS")
    queued = [gw.post("/run", {"input": {"do": "sleep", "seconds": 60}}).json()["id"]
              for _ in range(3)]
    assert gw.post(f"/cancel/{queued[0]}").json() == {"id": queued[0], "status": "CANCELLED"}
    assert gw.post("/purge-queue").json() == {"removed": 2, "status": "completed"}
    assert gw.post(f"/cancel/{running}").json() == {"id": running, "status": "CANCELLED"}
    for job_id in queued:
        assert gw.get(f"/status/{job_id}").json()["status"] == "CANCELLED"
    assert gw.post("/runsync", {"input": {"echo": 1}}).json()["status"] == "COMPLETED"
    assert not any(j in runs(d) for j in queued)       # a cancelled queued job never ran


def test_the_official_client_drives_every_call(fleet):
    runpod = pytest.importorskip("runpod")
    srv, gw, d = fleet
    runpod.endpoint_url_base = f"{gw.url}/v2"
    ep = runpod.Endpoint("gen", api_key="anything")
    assert ep.run_sync({"n": 2}, timeout=30) == [{"i": 0}, {"i": 1}]
    job = ep.run({"n": 3, "delay": 0.3})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert list(job.stream()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert job.output(timeout=30) == [{"i": 0}, {"i": 1}, {"i": 2}]
    long = ep.run({"n": 100, "delay": 0.5})
    for _ in range(200):
        if long.status() == "IN_PROGRESS":
            break
        time.sleep(0.05)
    assert long.cancel()["status"] == "CANCELLED"
    assert ep.health()["jobs"]["completed"] >= 2
    assert ep.purge_queue() == {"removed": 0, "status": "completed"}


def test_unknown_endpoints_and_bad_bodies_are_refused(fleet):
    srv, gw, d = fleet
    r = gw.post("/v2/other/run", {"input": {}})
    assert r.status_code == 404 and "other" in r.json()["error"]
    assert gw.get("/v2/other/status/x").status_code == 404
    for body, why in ((b"{", "JSON"), (b"[1]", "object"), (b'{"in": 1}', "input"),
                      (b'{"input": 1, "policy": {"ttl": -1}}', "policy.ttl"),
                      (b'{"input": 1, "webhook": "ftp://x"}', "webhook")):
        r = requests.post(gw.url + "/run", data=body, timeout=10)
        assert r.status_code == 400 and why in r.json()["error"], (body, r.text)
    big = requests.post(gw.url + "/run", data=b'{"input": "' + b"x" * (11 * 2**20) + b'"}',
                        timeout=30)
    assert big.status_code == 413
    assert srv.client().xlen(Keys("other").stream) == 0


def test_an_idempotency_key_makes_a_retry_the_same_job(fleet):
    srv, gw, d = fleet
    headers = {"Idempotency-Key": "order-1234"}
    first = gw.post("/run", {"input": {"echo": "once"}}, headers=headers).json()
    again = gw.post("/run", {"input": {"echo": "once"}}, headers=headers).json()
    assert first["id"] == again["id"]
    sync = gw.post("/runsync", {"input": {"echo": "once"}}, headers=headers).json()
    assert sync["id"] == first["id"] and sync["status"] == "COMPLETED"
    assert runs(d)[first["id"]] == 1
    other = gw.post("/run", {"input": {"echo": "once"}},
                    headers={"Idempotency-Key": "order-1235"}).json()
    assert other["id"] != first["id"]


def test_webhooks_come_from_the_outbox(fleet):
    srv, gw, d = fleet
    hook = Hook(fail_first=True)
    try:
        job_id = gw.post("/run", {"input": {"echo": "hook"}, "webhook": hook.url}).json()["id"]
        (_, first), (_, second) = hook.wait(2)      # a 500, then the retry
        assert first["id"] == second["id"] == job_id
        assert second["status"] == "COMPLETED" and second["output"]["echo"] == "hook"
        deadline = time.monotonic() + 10
        while srv.client().xlen(Keys("main").hooks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.client().xlen(Keys("main").hooks) == 0     # acknowledged and deleted
    finally:
        hook.server.shutdown()


def test_policy_ttl_and_execution_timeout_through_the_queue(fleet):
    srv, gw, d = fleet
    blocker = gw.post("/run", {"input": {"do": "sleep", "seconds": 1.5}}).json()["id"]
    gw.until(blocker, lambda s: s["status"] == "IN_PROGRESS")
    late = gw.post("/run", {"input": {}, "policy": {"ttl": 500}}).json()["id"]
    expired = gw.until(late, lambda s: s["status"] not in ("IN_QUEUE", "IN_PROGRESS"))
    assert expired["status"] == "TIMED_OUT" and "policy.ttl" in expired["error"]
    assert late not in runs(d)
    timed = gw.post("/runsync", {"input": {"do": "sleep", "seconds": 30},
                                 "policy": {"executionTimeout": 1000}}).json()
    assert timed["status"] == "TIMED_OUT" and "execution timeout" in timed["error"]


def test_every_final_state_is_counted_once(fleet):
    srv, gw, d = fleet
    before = finals(srv, "main")
    ids = [gw.post("/run", {"input": {"echo": i}}).json()["id"] for i in range(20)]
    for job_id in ids:
        gw.until(job_id, lambda s: s["status"] == "COMPLETED")
    assert finals(srv, "main") - before == 20
    assert all(runs(d)[j] == 1 for j in ids)


def test_a_worker_with_another_handler_is_refused(fleet):
    srv, gw, d = fleet
    other = start_worker(srv, "main", d, handler="misbehave.py", name="other")
    assert other.proc.wait(60) == 2
    assert "registered with the handler 'handlers/fleet_jobs.py'" in other.text()


@pytest.mark.parametrize("env, says", [
    ({"WORKER_ENDPOINT": ""}, "needs WORKER_ENDPOINT"),
    ({"WORKER_ENDPOINT": "a/b"}, "WORKER_ENDPOINT"),
    ({"WORKER_QUEUE_URL": "http://127.0.0.1:1"}, "redis:// or rediss://"),
    ({"WORKER_QUEUE_LEASE_S": "0"}, "WORKER_QUEUE_LEASE_S")])
def test_settings_that_cannot_work_are_refused_before_anything_starts(fleet, env, says):
    srv, gw, d = fleet
    w = start_worker(srv, "main", d, name="bad", **env)
    assert w.proc.wait(60) == 2 and says in w.text(), w.text()
    assert "child" not in w.text()


def test_the_queue_password_stays_out_of_the_child_and_the_logs(tmp_path):
    srv = RedisServer(tmp_path / "redis", password="s3cret-pw", policy="allkeys-lru")
    try:
        gw = Gateway(srv, "sec", tmp_path)
        w = start_worker(srv, "sec", tmp_path, WORKER_LOG_LEVEL="DEBUG",
                         WORKER_QUEUE_LEASE_S="5")
        seen = gw.post("/runsync", {"input": {"do": "env"}}).json()
        # the child sees the queue's settings but not its URL (the password is in it)
        assert seen["status"] == "COMPLETED"
        assert seen["output"]["env"] == ["WORKER_QUEUE_LEASE_S"]
        assert w.stop() == 0 and gw.stop() == 0
        for text in (w.text(), gw.text()):
            assert "s3cret-pw" not in text and "***@127.0.0.1" in text
        assert "maxmemory-policy allkeys-lru" in w.text()      # the eviction warning
    finally:
        srv.close()


def test_a_password_from_a_file(tmp_path):
    srv = RedisServer(tmp_path / "redis", password="from-a-file")
    try:
        secret = tmp_path / "pw"
        secret.write_text("from-a-file\n")
        plain = f"redis://127.0.0.1:{srv.port}/0"
        gw = Gateway(srv, "pf", tmp_path, WORKER_QUEUE_URL=plain,
                     WORKER_QUEUE_PASSWORD_FILE=str(secret))
        w = start_worker(srv, "pf", tmp_path, WORKER_QUEUE_URL=plain,
                         WORKER_QUEUE_PASSWORD_FILE=str(secret))
        assert gw.post("/runsync", {"input": {"echo": 1}}).json()["status"] == "COMPLETED"
        assert w.stop() == 0 and gw.stop() == 0
    finally:
        srv.close()


def test_refresh_several_children_and_the_result_limit_behave_as_elsewhere(tmp_path):
    srv = RedisServer(tmp_path / "redis")
    try:
        gw = Gateway(srv, "kids", tmp_path)
        w = start_worker(srv, "kids", tmp_path, WORKER_CHILDREN="2",
                         WORKER_MAX_RESULT_MB="0.01")
        big = gw.post("/runsync", {"input": {"do": "big", "bytes": 20_000}}).json()
        assert big["status"] == "FAILED" and "WORKER_MAX_RESULT_MB" in big["error"]
        first = gw.post("/runsync", {"input": {"do": "refresh"}}).json()
        assert first["status"] == "COMPLETED"
        ids = [gw.post("/run", {"input": {"do": "sleep", "seconds": 1}}).json()["id"]
               for _ in range(2)]
        both = [gw.until(j, lambda s: s["status"] == "IN_PROGRESS") for j in ids]
        assert len(both) == 2                  # two children: both run at once
        pids = {gw.until(j, lambda s: s["status"] == "COMPLETED")["output"]["pid"]
                for j in ids}
        assert len(pids) == 2 and first["output"]["pid"] not in pids   # refreshed
        assert w.stop() == 0 and gw.stop() == 0
    finally:
        srv.close()


def test_the_gateway_token_and_its_openapi(tmp_path):
    srv = RedisServer(tmp_path / "redis")
    try:
        gw = Gateway(srv, "tok", tmp_path, WORKER_API_TOKEN="t0ken")
        assert gw.post("/run", {"input": {}}).status_code == 401
        assert gw.get("/health").status_code == 200 and gw.get("/ping").status_code == 200
        ok = gw.post("/run", {"input": {}}, headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200 and ok.json()["status"] == "IN_QUEUE"
        assert gw.get("/openapi.json").status_code == 404      # off with a token
        assert gw.stop() == 0
        open_gw = Gateway(srv, "tok", tmp_path, name="gw-open")
        paths = open_gw.get("/openapi.json").json()["paths"]
        assert {"/run", "/runsync", "/v2/{endpoint_id}/status/{job_id}"} <= set(paths)
        assert open_gw.stop() == 0
    finally:
        srv.close()


def test_the_gateway_fuzzed_from_its_own_schema(fleet):
    """Every operation of the gateway's OpenAPI schema, fuzzed (endpoint names and job ids
    included): no 5xx, and every response matches what the schema declares."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    srv, gw, d = fleet
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            # A webhook the fuzzer names is looked up and posted to by the worker, off
            # this machine (tests/loopback_only refuses it): a string becomes a loopback
            # URL (the gateway only stores it); other types stay fuzzed.
            if isinstance(case.body, dict) and isinstance(case.body.get("webhook"), str):
                case.body["webhook"] = "http://127.0.0.1:9/fuzzed"
            case.call_and_validate(base_url=gw.url, timeout=30)
        fuzz()


def test_the_gateway_stops_on_a_signal_the_kernel_hands_to_a_thread_not_the_main_one(
        tmp_path):
    from tests.test_source_host import signal_another_thread
    srv = RedisServer(tmp_path / "redis")
    gw = None
    try:
        gw = Gateway(srv, "sig", tmp_path)
        signal_another_thread(gw.proc.pid, 15)
        assert gw.proc.wait(20) == 0, gw.text()
    finally:
        if gw is not None and gw.proc.poll() is None:
            gw.proc.kill()
        srv.close()
