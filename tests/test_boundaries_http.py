"""The edges users and the queue reach: the local API (real server process, real HTTP) and
the RunPod protocol (a real worker process against the stand-in queue). Each refusal is
clear, nothing is lost, and the next job runs."""
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from worker.jsonlimits import MAX_DEPTH


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from tests.support import Server
    s = Server("edges.py", tmp_path_factory.mktemp("edges"))
    yield s
    s.close()


def runsync(api, data: bytes, **headers):
    return requests.post(f"{api.url}/runsync", data=data, timeout=60,
                         headers={"Content-Type": "application/json", **headers})


def still_serves(api):
    r = api.post("/runsync", {"input": {"do": "echo", "echo": "next"}})
    assert r.status_code == 200 and r.json()["output"]["echo"] == "next", r.text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "latin-1", "cp1252"])
def test_bodies_not_in_utf8_get_400_and_the_worker_goes_on(api, encoding):
    body = json.dumps({"input": {"do": "echo", "echo": "é"}}, ensure_ascii=False)
    r = runsync(api, body.encode(encoding))
    assert r.status_code == 400, r.text
    assert "UTF-8" in r.json()["error"] or "not valid JSON" in r.json()["error"]
    still_serves(api)


def test_a_utf8_byte_order_mark_is_accepted(api):
    r = runsync(api, json.dumps({"input": {"do": "echo", "echo": "é"}}).encode("utf-8-sig"))
    assert r.status_code == 200 and r.json()["output"]["echo"] == "é", r.text


@pytest.mark.parametrize("body, why", [
    (b'{"input": NaN}', "NaN is not a JSON number"),
    (b'{"input": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"input": "\\udc00"}', "unpaired UTF-16 surrogate"),
    (b'{"input": ' + b"1" * 5000 + b"}", "not valid JSON"),
    (b'{"input": ' + nested(MAX_DEPTH) + b"}", "more than 200 levels deep"),
    (b'{"input": {}, "policy": []}', "'policy' must be an object"),
])
def test_values_outside_json_or_the_limits_get_400(api, body, why):
    r = runsync(api, body)
    assert r.status_code == 400 and why in r.json()["error"], r.text
    still_serves(api)


def test_input_nested_up_to_the_limit_runs_in_every_step(api):
    r = runsync(api, b'{"input": {"do": "echo", "echo": ' + nested(MAX_DEPTH - 2) + b"}}")
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text[:300]


@pytest.mark.parametrize("timeout", ["1" + "0" * 400, "-5", '"1000"', "1e308", "true",
                                     "2592000001"])
def test_an_execution_timeout_that_is_not_a_sane_number_gets_400(api, timeout):
    r = runsync(api, b'{"input": {}, "policy": {"executionTimeout": %s}}' % timeout.encode())
    assert r.status_code == 400 and "executionTimeout" in r.json()["error"], r.text
    still_serves(api)


def test_with_a_token_every_route_but_health_needs_it_docs_included(server):
    s = server("edges.py", WORKER_API_TOKEN="tok")
    for path in ("/docs", "/redoc", "/openapi.json", "/status/x", "/v2/ep/docs"):
        assert s.get(path).status_code in (401, 404), path
    assert s.post("/run", {"input": {}}).status_code == 401
    assert s.get("/health").status_code == 200
    good = requests.post(f"{s.url}/runsync", json={"input": {"do": "echo", "echo": 1}},
                         headers={"Authorization": "Bearer tok"}, timeout=30)
    assert good.json()["output"]["echo"] == 1


def test_health_is_503_with_the_reason_when_the_worker_cannot_run_jobs(server):
    s = server("raise_at_import.py")
    s.health_until(lambda w: w["state"] != "running")
    r = s.get("/health")
    assert r.status_code == 503 and r.json()["worker"]["state"] == "setup_failed"
    assert r.json()["worker"]["failure"]


def test_a_full_queue_answers_429_with_retry_after_and_accepts_again_later(server):
    s = server("edges.py", WORKER_API_QUEUE_JOBS="2")
    first = s.post("/run", {"input": {"do": "sleep", "seconds": 1.0}}).json()["id"]
    s.until(first, lambda st: st["status"] == "IN_PROGRESS")
    queued = [s.post("/run", {"input": {"do": "echo"}}) for _ in range(2)]
    assert all(r.status_code == 200 for r in queued)
    full = s.post("/run", {"input": {"do": "echo"}})
    assert full.status_code == 429 and full.headers["Retry-After"] == "1"
    assert "WORKER_API_QUEUE_JOBS" in full.json()["error"]
    for r in queued:
        s.until(r.json()["id"], lambda st: st["status"] == "COMPLETED")
    assert s.post("/run", {"input": {"do": "echo"}}).status_code == 200


def test_the_queue_is_bounded_by_bytes_too(server):
    s = server("edges.py", WORKER_API_QUEUE_MB="1")
    first = s.post("/run", {"input": {"do": "sleep", "seconds": 1.0}}).json()["id"]
    s.until(first, lambda st: st["status"] == "IN_PROGRESS")
    big = {"input": {"do": "echo", "echo": "x" * 600_000}}
    assert s.post("/run", big).status_code == 200
    full = s.post("/run", big)
    assert full.status_code == 429 and "WORKER_API_QUEUE_MB" in full.json()["error"]


class _Receiver:
    """A webhook receiver on loopback; `stuck` ones never answer."""

    def __init__(self, stuck: bool):
        self.got = []
        self.event = threading.Event()
        release = self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(json.loads(body))
                outer.event.set()
                if stuck:
                    release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


def test_a_stuck_webhook_receiver_delays_only_its_own_jobs_webhook(server):
    s = server("edges.py")
    stuck, fine = _Receiver(stuck=True), _Receiver(stuck=False)
    try:
        a = s.post("/runsync", {"input": {"do": "echo"}, "webhook": stuck.url}).json()["id"]
        assert stuck.event.wait(30)          # A's webhook is in flight, and will hang
        b = s.post("/runsync", {"input": {"do": "echo"}, "webhook": fine.url}).json()["id"]
        assert fine.event.wait(5), "B's webhook waited behind A's stuck receiver"
        assert fine.got[0]["id"] == b and stuck.got[0]["id"] == a
        assert not stuck.release.is_set()
    finally:
        stuck.close()
        fine.close()


def test_a_generator_error_chunk_ends_with_the_error_alone_as_the_sdk(server):
    s = server("gen_sync.py")
    r = s.post("/runsync", {"input": {"n": 5, "error_at": 1}}).json()
    assert r["status"] == "FAILED" and r["error"] == "chunk error at 1" and "output" not in r


# --- the RunPod queue -------------------------------------------------------------------------

def test_jobs_from_the_queue_that_cannot_be_read_are_reported_under_their_id(fake, start):
    w = start("edges.py")
    fake.add_jobs([
        b'{"id": "deep", "input": ' + nested(MAX_DEPTH + 50) + b"}",
        b'{"id": "nan", "input": NaN}',
        {"id": "huge-timeout", "input": {}, "policy": {"executionTimeout": 10 ** 400}},
        {"id": "neg-timeout", "input": {}, "policy": {"executionTimeout": -1}},
        {"id": "fine", "input": {"do": "echo", "echo": 1}}])
    finals = fake.wait_final(["deep", "nan", "huge-timeout", "neg-timeout", "fine"], 60)
    for job in ("deep", "nan", "huge-timeout", "neg-timeout"):
        info = json.loads(finals[job]["error"])
        assert info["error_type"] == "JobRefused", info
    assert "more than 200 levels deep" in json.loads(finals["deep"]["error"])["error_message"]
    assert finals["fine"]["output"]["echo"] == 1
    assert all(len(fake.finals[j]) == 1 for j in finals)
    assert w.stop() == 0


def test_an_idle_worker_exits_at_once_on_sigterm_even_with_a_long_poll_open(tmp_path):
    from tests.fake_runpod import FakeRunPod
    from tests.support import Worker
    with FakeRunPod(long_poll=60) as q:
        w = Worker(q, "edges.py", tmp_path, WORKER_SHUTDOWN_GRACE="30")
        try:
            assert q.wait_for(lambda f: len(f.pings) > 0 and f.counts["take"] > 0, 60)
            t0 = time.monotonic()
            w.proc.send_signal(signal.SIGTERM)
            assert w.proc.wait(30) == 0, w.text()
            took = time.monotonic() - t0
            assert took < 10, f"took {took:.1f}s to exit; the grace is 30 s"   # not the grace
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_the_heartbeat_keeps_its_interval_while_running_jobs_drain(fake, start):
    w = start("edges.py", RUNPOD_PING_INTERVAL="500", WORKER_SHUTDOWN_GRACE="30")
    fake.add_jobs([{"id": "long", "input": {"do": "sleep", "seconds": 2.0}}])
    assert fake.wait_for(lambda f: any("long" in str(p) for p in f.pings), 30)
    before = len(fake.pings)
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0, w.text()
    drained = time.monotonic() - t0
    pings = len(fake.pings) - before
    assert pings <= drained / 0.5 + 3, f"{pings} pings in {drained:.1f}s at a 0.5 s interval"
    assert fake.finals["long"][0]["output"]["tag"] is None


def test_one_jobs_retries_do_not_hold_back_another_jobs_result(fake, start):
    fails = fake.fail_results("stubborn", 4)
    w = start("conc_sync.py")
    fake.add_jobs([{"id": "stubborn", "input": {"delay": 0.2}},
                   {"id": "quick", "input": {"delay": 0.4}}])
    fake.wait_final(["stubborn", "quick"], 60)
    assert fails["n"] == 4
    assert fake.done_at["quick"] < fake.done_at["stubborn"]   # posted while stubborn retried
    assert w.stop() == 0


def test_a_flood_of_progress_is_coalesced_and_the_result_comes_at_once(fake, start):
    w = start("edges.py")
    fake.add_jobs([{"id": "chatty", "input": {"do": "progress", "n": 10_000}},
                   {"id": "after", "input": {"do": "echo", "echo": 1}}])
    finals = fake.wait_final(["chatty", "after"], 60)
    assert finals["chatty"]["output"] == {"progressed": 10_000}
    posted = fake.progress["chatty"]
    assert 1 <= len(posted) < 10_000
    assert fake.order["chatty"][-1] == "done" and fake.order["chatty"].count("done") == 1
    values = [p["output"]["i"] for p in posted]
    assert values == sorted(values)                           # in order, newest last
    assert w.stop() == 0
