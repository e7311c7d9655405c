"""The local API with a real server on loopback, driven by requests and by the official
runpod client."""
import json
import time

import pytest
import requests

from tests.support import Hook, Server


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    s = Server("misbehave.py", tmp_path_factory.mktemp("api"))
    yield s
    s.close()


def test_run_then_status(api):
    r = api.post("/run", {"input": {"do": "sleep", "seconds": 0.3}})
    assert r.status_code == 200 and r.json()["status"] == "IN_QUEUE"
    job_id = r.json()["id"]
    running = api.until(job_id, lambda s: s["status"] == "IN_PROGRESS")
    assert "delayTime" in running
    done = api.until(job_id, lambda s: s["status"] == "COMPLETED")
    assert done["output"] == "slept"
    assert done["executionTime"] >= 250 and "delayTime" in done


def test_runsync_returns_the_result_or_the_running_record(api):
    r = api.post("/runsync", {"input": {"do": "ok", "echo": 5}})
    assert r.json()["status"] == "COMPLETED" and r.json()["output"]["echo"] == 5
    slow = api.post("/runsync?wait=1000", {"input": {"do": "sleep", "seconds": 3}}).json()
    assert slow["status"] == "IN_PROGRESS"
    assert api.until(slow["id"], lambda s: s["status"] == "COMPLETED")["output"] == "slept"


def test_progress_shows_in_status(api):
    job_id = api.post("/run", {"input": {"do": "progress_sleep", "seconds": 1}}).json()["id"]
    status = api.until(job_id, lambda s: s.get("output") == {"stage": "halfway"})
    assert status["status"] == "IN_PROGRESS"
    assert api.until(job_id, lambda s: s["status"] == "COMPLETED")["output"] == "slept"


def test_failures_are_reported_with_their_error(api):
    s = api.post("/runsync", {"input": {"do": "raise"}}).json()
    assert s["status"] == "FAILED"
    assert json.loads(s["error"])["error_message"] == "bad things happened"
    s = api.post("/runsync", {"input": {"do": "error_key"}}).json()
    assert s["status"] == "FAILED" and s["error"] == "custom failure"
    assert s["output"] == {"partial": 1}


def test_cancel_really_stops_a_running_job(api):
    job_id = api.post("/run", {"input": {"do": "sleep", "seconds": 60}}).json()["id"]
    api.until(job_id, lambda s: s["status"] == "IN_PROGRESS")
    r = api.post(f"/cancel/{job_id}")
    assert r.json() == {"id": job_id, "status": "CANCELLED"}
    assert api.get(f"/status/{job_id}").json()["status"] == "CANCELLED"
    after = api.post("/runsync", {"input": {"do": "ok"}}).json()
    assert after["status"] == "COMPLETED"
    assert api.get("/health").json()["worker"]["restarts"] >= 1   # the sync job's child went


def test_purge_queue_drops_only_queued_jobs(api):
    running = api.post("/run", {"input": {"do": "sleep", "seconds": 8}}).json()["id"]
    api.until(running, lambda s: s["status"] == "IN_PROGRESS")
    queued = [api.post("/run", {"input": {"do": "ok"}}).json()["id"] for _ in range(300)]
    r = api.post("/purge-queue").json()
    assert r == {"removed": 300, "status": "completed"}
    # The moment purge has answered, /health and /status agree with it: no wait.
    assert api.get("/health").json()["jobs"]["inQueue"] == 0
    assert {api.get(f"/status/{j}").json()["status"] for j in queued} == {"CANCELLED"}
    assert api.until(running, lambda s: s["status"] == "COMPLETED")["output"] == "slept"


def test_health(api):
    h = api.get("/health").json()
    assert set(h["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert h["worker"]["state"] == "running" and h["worker"]["child"]["pid"] > 0


@pytest.mark.parametrize("body, code, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1]", 400, "JSON object"),
    (b'{"inputs": 1}', 400, "no 'input'"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b'{"input": 1, "webhook": "ftp://x"}', 400, "webhook"),
    (b'{"input": 1, "webhook": "http://a/\\n2026 INFO forged"}', 400, "control character"),
    (b'{"input": 1, "webhook": "http://a:99999/"}', 400, "webhook"),
    (b'{"input": 1, "webhook": "https://"}', 400, "a host"),
])
def test_bad_requests_get_400_with_a_message(api, body, code, message):
    for path in ("/run", "/runsync", "/v2/ep/run"):
        r = requests.post(f"{api.url}{path}", data=body, timeout=10)
        assert r.status_code == code and message in r.json()["error"]


def test_unknown_job_ids_get_404(api):
    for path in ("/status/nope", "/stream/nope", "/v2/ep/status/nope"):
        assert api.get(path).status_code == 404
    assert api.post("/cancel/nope").status_code == 404


def test_size_limits(api):
    big = b'{"input": {"do": "ok", "echo": "' + b"a" * (11 * 2**20) + b'"}}'
    r = requests.post(f"{api.url}/run", data=big, timeout=30)
    assert r.status_code == 413 and "10 MB" in r.json()["error"]
    ok = requests.post(f"{api.url}/runsync", data=big, timeout=60)
    assert ok.status_code == 200 and ok.json()["status"] == "COMPLETED"
    assert len(ok.json()["output"]["echo"]) == 11 * 2**20
    bigger = b'{"input": "' + b"a" * (21 * 2**20) + b'"}'
    r = requests.post(f"{api.url}/runsync", data=bigger, timeout=30)
    assert r.status_code == 413 and "20 MB" in r.json()["error"]

    def chunks():                      # no Content-Length: counted as it arrives
        for _ in range(11):
            yield b"a" * 2**20
    r = requests.post(f"{api.url}/run", data=chunks(), timeout=30)
    assert r.status_code == 413


def test_post_on_status_and_stream_for_sdk_dev_server_users(api):
    job_id = api.post("/runsync", {"input": {"do": "ok"}}).json()["id"]
    assert api.post(f"/status/{job_id}").json()["status"] == "COMPLETED"
    assert api.post(f"/stream/{job_id}").json()["stream"] == []


def test_docs_and_openapi(api):
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert "/run" in paths and "/v2/{endpoint_id}/runsync" in paths


def test_stream_returns_new_chunks_each_call(server):
    s = server("gen_sync.py", WORKER_RETURN_AGGREGATE_STREAM="true")
    job_id = s.post("/run", {"input": {"n": 4, "delay": 0.2}}).json()["id"]
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        part = s.get(f"/stream/{job_id}").json()
        seen.extend(c["output"] for c in part["stream"])
        if part["status"] == "COMPLETED" and not part["stream"]:
            break
        time.sleep(0.1)
    assert seen == [{"i": i} for i in range(4)]
    assert s.get(f"/status/{job_id}").json()["output"] == seen


def test_token_guards_every_route_but_health(server):
    s = server(WORKER_API_TOKEN="s3cret")
    assert s.post("/run", {"input": {}}).status_code == 401
    assert s.post("/run", {"input": {}}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert s.get("/status/x").status_code == 401
    ok = s.post("/runsync", {"input": {"do": "ok"}}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["status"] == "COMPLETED"
    assert s.get("/health").status_code == 200
    assert s.get("/ping").status_code in (200, 204)      # the load balancer has no token


def test_finished_results_expire(server):
    s = server(WORKER_RESULT_TTL="0.5")
    job_id = s.post("/runsync", {"input": {"do": "ok"}}).json()["id"]
    deadline = time.monotonic() + 10
    while s.get(f"/status/{job_id}").status_code != 404:
        assert time.monotonic() < deadline, "the result never expired"
        time.sleep(0.1)


def test_webhooks_on_completion_and_failure_with_retries(api):
    hook = Hook(fail_first=True)
    try:
        ok = api.post("/run", {"input": {"do": "ok"}, "webhook": hook.url}).json()["id"]
        bad = api.post("/run", {"input": {"do": "raise"}, "webhook": hook.url}).json()["id"]
        with hook.cond:
            assert hook.cond.wait_for(lambda: len(hook.posts) == 3, 30)     # one retry after the 500
        by_id = {}
        for p in hook.posts:
            by_id.setdefault(p["id"], []).append(p)
        assert len(by_id[ok]) + len(by_id[bad]) == 3
        assert by_id[ok][-1]["status"] == "COMPLETED" and "output" in by_id[ok][-1]
        assert by_id[bad][-1]["status"] == "FAILED" and "error" in by_id[bad][-1]
        assert {"delayTime", "executionTime"} <= set(by_id[ok][-1])
    finally:
        hook.server.shutdown()


def test_the_official_runpod_client_drives_every_call(server):
    runpod = pytest.importorskip("runpod")
    s = server("gen_sync.py", WORKER_RETURN_AGGREGATE_STREAM="true")
    runpod.endpoint_url_base = f"{s.url}/v2"
    ep = runpod.Endpoint("local", api_key="anything")

    assert ep.run_sync({"n": 2}, timeout=30) == [{"i": 0}, {"i": 1}]
    job = ep.run({"n": 3, "delay": 0.3})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert list(job.stream()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert job.output(timeout=30) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert job.status() == "COMPLETED"

    long = ep.run({"n": 100, "delay": 0.5})
    for _ in range(100):
        if long.status() == "IN_PROGRESS":
            break
        time.sleep(0.05)
    assert long.cancel()["status"] == "CANCELLED"
    health = ep.health()
    assert health["jobs"]["completed"] >= 2
    assert ep.purge_queue() == {"removed": 0, "status": "completed"}


def test_policy_ttl_ends_a_job_queued_or_running(api):
    """policy.ttl (RunPod's meaning): how long a job may live from /run, queued and
    running. One that waits past it ends TIMED_OUT without running; one that runs past it
    is stopped TIMED_OUT, with the ttl named."""
    blocker = api.post("/run", {"input": {"do": "sleep", "seconds": 2}}).json()["id"]
    api.until(blocker, lambda s: s["status"] == "IN_PROGRESS")
    queued = api.post("/run", {"input": {"do": "ok"}, "policy": {"ttl": 300}}).json()["id"]
    expired = api.until(queued, lambda s: s["status"] != "IN_QUEUE", timeout=10)
    assert expired["status"] == "TIMED_OUT" and "before it started" in expired["error"]
    assert api.get(f"/status/{blocker}").json()["status"] == "IN_PROGRESS"  # not held up
    api.until(blocker, lambda s: s["status"] == "COMPLETED")
    running = api.post("/runsync", {"input": {"do": "sleep", "seconds": 30},
                                    "policy": {"ttl": 1500}}).json()
    assert running["status"] == "TIMED_OUT" and "policy.ttl" in running["error"]
    assert api.post("/runsync", {"input": {"do": "ok"}}).json()["status"] == "COMPLETED"
    bad = api.post("/run", {"input": {}, "policy": {"ttl": 0}})
    assert bad.status_code == 400 and "policy.ttl" in bad.json()["error"]
