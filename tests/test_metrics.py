"""Prometheus metrics, scraped through the real HTTP routes and read with the Prometheus
text parser: after each kind of ending (completed, failed, timed out, cancelled, a crash,
a refresh) the counters move by exactly what happened, no more."""
import json
import time

import requests
from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_runpod import FakeRunPod
from tests.support import Worker, _free_port

# The series that count events; the test checks that they, and only they, moved.
EVENTS = {"gpu_worker_jobs_total", "gpu_worker_jobs_received_total",
          "gpu_worker_child_starts_total", "gpu_worker_job_queue_seconds_count",
          "gpu_worker_job_execution_seconds_count", "gpu_worker_child_setup_seconds_count"}


def parse(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def moved(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if k[0] in EVENTS and after.get(k, 0) != before.get(k, 0)}


def job(state, reason):
    return ("gpu_worker_jobs_total", (("reason", reason), ("state", state)))


def starts(cause):
    return ("gpu_worker_child_starts_total", (("cause", cause),))


RAN = {("gpu_worker_jobs_received_total", ()): 1,
       ("gpu_worker_job_queue_seconds_count", ()): 1,
       ("gpu_worker_job_execution_seconds_count", ()): 1}
NEW_CHILD = {("gpu_worker_child_setup_seconds_count", ()): 1}


class Scraper:
    def __init__(self, url, **kw):
        self.url, self.kw = url, kw
        self.last = self.now()

    def now(self) -> dict:
        r = requests.get(self.url, timeout=30, **self.kw)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return parse(r.text)

    def expect(self, diff: dict, timeout=30) -> dict:
        """Wait until the events moved by `diff` since the last call (a child's start is
        counted on the supervisor's thread, just after /health may show it), then check
        that nothing else moved."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.now()
            got = moved(self.last, now)
            if got == diff or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == diff
        self.last = now
        return now


def test_counters_move_by_exactly_what_happened(server):
    s = server()
    s.health_until(lambda w: w["child"] and w["child"]["state"] == "ready")
    m = Scraper(f"{s.url}/metrics")
    first = m.last
    assert first[starts("first")] == 1 and first[("gpu_worker_child_setup_seconds_count", ())] == 1
    assert first[("gpu_worker_state", (("gpu_worker_state", "running"),))] == 1
    assert first[("gpu_worker_child_up", (("child", "0"),))] == 1

    # completed, with the bytes in and out counted exactly
    body = json.dumps({"input": {"do": "ok", "echo": "é" * 100}}).encode()
    r = requests.post(f"{s.url}/runsync", data=body, timeout=60)
    assert r.json()["status"] == "COMPLETED"
    before = m.last
    after = m.expect({job("COMPLETED", "completed"): 1, **RAN})
    grew = {d: after[("gpu_worker_payload_bytes_total", (("direction", d),))]
            - before.get(("gpu_worker_payload_bytes_total", (("direction", d),)), 0)
            for d in ("in", "out")}
    assert grew == {"in": len(body), "out": len(r.content)}

    assert s.post("/runsync", {"input": {"do": "raise"}}).json()["status"] == "FAILED"
    m.expect({job("FAILED", "handler_error"): 1, **RAN})

    def replaced(do, **extra):
        old = s.get("/health").json()["worker"]["child"]["pid"]
        out = s.post("/runsync", {"input": {"do": do}, **extra}).json()
        s.health_until(lambda w: w["child"] and w["child"]["pid"] != old
                       and w["child"]["state"] == "ready")
        return out

    out = replaced("sleep", policy={"executionTimeout": 300})
    assert out["status"] == "TIMED_OUT"
    m.expect({job("TIMED_OUT", "timed_out"): 1, **RAN, starts("timeout"): 1, **NEW_CHILD})

    assert replaced("os_exit")["status"] == "FAILED"
    m.expect({job("FAILED", "worker_lost"): 1, **RAN, starts("crash"): 1, **NEW_CHILD})

    assert replaced("refresh")["status"] == "COMPLETED"
    m.expect({job("COMPLETED", "completed"): 1, **RAN, starts("refresh"): 1, **NEW_CHILD})

    # cancelled while running: the gauges show it in flight first
    old = s.get("/health").json()["worker"]["child"]["pid"]
    job_id = s.post("/run", {"input": {"do": "sleep"}}).json()["id"]
    s.until(job_id, lambda st: st["status"] == "IN_PROGRESS")
    running = m.now()
    assert running[("gpu_worker_jobs_in_flight", ())] == 1
    assert running[("gpu_worker_child_jobs_in_flight", (("child", "0"),))] == 1
    assert s.post(f"/cancel/{job_id}").json()["status"] == "CANCELLED"
    s.health_until(lambda w: w["child"] and w["child"]["pid"] != old
                   and w["child"]["state"] == "ready")
    after = m.expect({job("CANCELLED", "cancelled"): 1, **RAN, starts("cancel"): 1,
                      **NEW_CHILD})
    assert after[("gpu_worker_jobs_in_flight", ())] == 0

    # a job refused before it ran is counted, with no times
    assert s.post("/runsync", {"input": {"do": "ok"}, "policy": "x"}).status_code == 400
    m.expect({})                   # refused by the API itself: never reached the worker
    text = requests.get(f"{s.url}/metrics", timeout=30).text
    assert "gpu_worker_job_execution_seconds_bucket" in text and "process_cpu_seconds_total" in text


def test_metrics_need_the_token_like_every_route_but_health(server):
    s = server(WORKER_API_TOKEN="s3cret")
    assert s.get("/metrics").status_code == 401
    assert s.get("/v2/local/metrics").status_code == 401
    ok = s.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and "gpu_worker_jobs_received_total" in ok.text
    assert s.get("/health").status_code == 200


def test_queue_mode_serves_metrics_on_its_own_port_with_posts_and_retries(tmp_path):
    port = _free_port()
    with FakeRunPod() as q:
        failed = q.fail_results("retried", times=2)        # two 500s, then delivered
        q.add_jobs([{"id": "ok", "input": {"do": "ok"}},
                    {"id": "retried", "input": {"do": "raise"}},
                    {"id": "bad", "input": {"do": "ok"}, "policy": "not a dict"}])
        w = Worker(q, "misbehave.py", tmp_path, WORKER_METRICS_PORT=port)
        try:
            finals = q.wait_final(["ok", "retried", "bad"])
            assert failed["n"] == 2
            m = Scraper(f"http://127.0.0.1:{port}/metrics")
            deadline = time.monotonic() + 30      # the post is counted once answered
            while m.last.get(("gpu_worker_result_posts_total",
                              (("kind", "done"), ("outcome", "delivered")))) != 3:
                assert time.monotonic() < deadline, m.last
                time.sleep(0.05)
                m.last = m.now()
            got = m.last
        finally:
            assert w.stop() == 0
    assert finals["ok"]["output"]["calls"] == 1 and "error" in finals["retried"]
    assert got[job("COMPLETED", "completed")] == 1
    assert got[job("FAILED", "handler_error")] == 1
    assert got[job("FAILED", "refused")] == 1        # a bad policy: refused, still counted
    assert got[("gpu_worker_jobs_received_total", ())] == 3
    assert got[("gpu_worker_job_execution_seconds_count", ())] == 2    # the refused never ran
    assert got[("gpu_worker_result_posts_total", (("kind", "done"), ("outcome", "retry")))] == 2
    assert got[("gpu_worker_job_delivery_seconds_count", (("via", "runpod"),))] == 3
    assert got[("gpu_worker_payload_bytes_total", (("direction", "in"),))] > 0
    assert f"metrics on http://127.0.0.1:{port}/metrics" in w.text()


def test_a_metrics_port_that_cannot_open_is_logged_and_jobs_run_on(harness, caplog):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        h = harness("misbehave.py", metrics_port=port)
        assert h.run({"do": "ok"}).state.value == "COMPLETED"
    assert f"metrics port 127.0.0.1:{port} could not be opened" in caplog.text
    assert h.sup.metrics.port is None


@given(st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), max_size=50))
def test_the_loops_histograms_read_as_prometheus_clients_own(values):
    """The loop tallies without locks; scraped, its histogram must be the one
    prometheus-client's Histogram would show for the same observations."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from worker.parent.metrics import BUCKETS, _Buckets
    ours, theirs = _Buckets(), CollectorRegistry()
    reference = Histogram("h", "h", buckets=BUCKETS, registry=theirs)
    for v in values:
        ours.observe(v)
        reference.observe(v)
    mine = CollectorRegistry()
    mine.register(type("C", (), {"collect": lambda self: [ours.family("h", "h")]})())
    a, b = parse(generate_latest(mine).decode()), parse(generate_latest(theirs).decode())
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(b[k])) for k in a)
