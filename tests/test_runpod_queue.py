"""The RunPod worker protocol against the stand-in queue: a real worker process, real HTTP
on loopback, real signals."""
import json
import signal
import time

from tests.fake_runpod import FakeRunPod
from tests.support import Worker


def _jobs(n, prefix="j", **inp):
    return [{"id": f"{prefix}{i}", "input": {"do": "ok", "echo": i, **inp}} for i in range(n)]


def test_many_jobs_each_reported_exactly_once(fake, start):
    w = start()
    fake.add_jobs(_jobs(200))
    finals = fake.wait_final([f"j{i}" for i in range(200)])
    assert w.stop() == 0
    assert all(len(fake.finals[f"j{i}"]) == 1 for i in range(200))
    assert [finals[f"j{i}"]["output"]["echo"] for i in range(200)] == list(range(200))
    assert all(q.get("job_in_progress") == ["0"] for q, _ in fake.takes)
    assert fake.bad_auth == 0
    assert fake.final_query["j0"]["isStream"] == ["false"]


def test_failures_and_bad_jobs_are_reported(fake, start):
    w = start()
    fake.add_jobs([{"id": "boom", "input": {"do": "raise"}}, {"id": "noinput"},
                   {"id": "crash", "input": {"do": "os_exit"}}, {"id": "after", "input": {}}])
    finals = fake.wait_final(["boom", "noinput", "crash", "after"])
    assert json.loads(finals["boom"]["error"])["error_message"] == "bad things happened"
    assert "no 'input'" in json.loads(finals["noinput"]["error"])["error_message"]
    assert "exited with code 7" in json.loads(finals["crash"]["error"])["error_message"]
    assert "output" in finals["after"]
    assert w.stop() == 0


def test_stream_and_progress_arrive_in_order_before_the_result(fake, start):
    w = start("gen_sync.py", WORKER_RETURN_AGGREGATE_STREAM="true")
    fake.add_jobs([{"id": "g", "input": {"n": 5}}])
    final = fake.wait_final(["g"])["g"]
    assert [b["output"] for b in fake.streams["g"]] == [{"i": i} for i in range(5)]
    assert fake.order["g"] == ["stream"] * 5 + ["done"]
    assert final["output"] == [{"i": i} for i in range(5)]
    assert fake.final_query["g"]["isStream"] == ["true"]
    assert w.stop() == 0


def test_progress_updates_come_before_the_result(fake, start):
    w = start()
    fake.add_jobs([{"id": "p", "input": {"do": "progress", "n": 4}}])
    fake.wait_final(["p"])
    order = fake.order["p"]
    assert order[-1] == "done" and set(order[:-1]) == {"progress"}
    # updates that wait behind a post in flight are coalesced: the latest always arrives
    steps = [b["output"]["step"] for b in fake.progress["p"]]
    assert steps[-1] == 3 and steps == sorted(set(steps))
    assert w.stop() == 0


def test_heartbeat_carries_the_running_job(fake, start):
    w = start()
    fake.add_jobs([{"id": "slow", "input": {"do": "sleep", "seconds": 1.0}}])
    fake.wait_final(["slow"])
    assert any(q.get("job_id") == ["slow"] for q in fake.pings)
    assert all("runpod_version" in q for q in fake.pings)
    assert w.stop() == 0


def test_stop_signal_stops_a_sync_job_and_the_worker_goes_on(fake, start):
    w = start()
    fake.add_jobs([{"id": "long", "input": {"do": "sleep", "seconds": 60}}])
    assert fake.wait_for(lambda f: any(q.get("job_id") == ["long"] for q in f.pings), 30)
    fake.stop_job("long")
    fake.add_jobs([{"id": "next", "input": {"do": "ok"}}])
    fake.wait_final(["next"], timeout=30)
    assert not fake.finals.get("long")       # as runpod-python: a stopped job posts nothing
    assert "the platform asked to stop this job" in w.text()
    assert w.stop() == 0


def test_stop_signal_cancels_an_async_task(fake, start):
    w = start("async_plain.py")
    fake.add_jobs([{"id": "first", "input": {}}, {"id": "long", "input": {"delay": 60}}])
    first = fake.wait_final(["first"])["first"]
    assert fake.wait_for(lambda f: any(q.get("job_id") == ["long"] for q in f.pings), 30)
    fake.stop_job("long")
    fake.add_jobs([{"id": "next", "input": {}}])
    nxt = fake.wait_final(["next"], timeout=30)["next"]
    assert nxt["output"]["pid"] == first["output"]["pid"]      # same child: only the task stopped
    assert not fake.finals.get("long")
    assert w.stop() == 0


def _every(kinds: dict):
    """A fault plan: {kind: {n: fault}} by the n-th request of each kind."""
    return lambda kind, n: kinds.get(kind, {}).get(n)


def test_injected_5xx_and_dropped_connections_lose_and_duplicate_nothing(tmp_path):
    plan = {"done": {n: ("500" if n % 3 == 0 else "drop") for n in range(1, 200) if n % 3 == 0 or n % 5 == 0},
            "stream": {2: "500", 4: "drop"},
            "take": {3: "500", 6: "drop", 9: "slow"}}
    with FakeRunPod(long_poll=0.3, fault=_every(plan)) as q:
        w = Worker(q, "misbehave.py", tmp_path)
        try:
            q.add_jobs(_jobs(60))
            finals = q.wait_final([f"j{i}" for i in range(60)], timeout=120)
            assert all(len(q.finals[f"j{i}"]) == 1 for i in range(60))
            assert [finals[f"j{i}"]["output"]["echo"] for i in range(60)] == list(range(60))
            assert w.stop() == 0
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_undeliverable_result_is_kept_and_redelivered(tmp_path):
    # the first 6 job-done posts fail: one more than a round of retries
    plan = {"done": {n: "500" for n in range(1, 7)}}
    with FakeRunPod(long_poll=0.3, fault=_every(plan)) as q:
        w = Worker(q, "misbehave.py", tmp_path)
        try:
            q.add_jobs(_jobs(1))
            final = q.wait_final(["j0"], timeout=60)["j0"]
            assert final["output"]["echo"] == 0 and len(q.finals["j0"]) == 1
            assert w.stop() == 0
            assert "kept, and retried" in w.text()
            assert "result delivered after" in w.text()
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_result_over_the_limit_is_reported_failed(fake, start):
    w = start(WORKER_MAX_RESULT_MB="0.001")
    fake.add_jobs([{"id": "big", "input": {"do": "ok", "echo": "x" * 5000}}])
    final = fake.wait_final(["big"])["big"]
    info = json.loads(final["error"])
    assert info["error_type"] == "ResultTooLarge" and "WORKER_MAX_RESULT_MB" in info["error_message"]
    assert w.stop() == 0


def test_batch_take_when_the_handler_runs_several_jobs(fake, start):
    w = start("conc_async.py")
    fake.add_jobs([{"id": f"c{i}", "input": {"delay": 0.2}} for i in range(12)])
    finals = fake.wait_final([f"c{i}" for i in range(12)])
    batch_sizes = [int(q["batch_size"][0]) for q, _ in fake.takes if "batch_size" in q]
    assert batch_sizes and max(batch_sizes) > 1
    assert len({f["output"]["pid"] for f in finals.values()}) == 1
    assert w.stop() == 0


def test_empty_queue_and_failing_queue_get_backoff_not_a_hot_loop(tmp_path):
    with FakeRunPod(long_poll=0.0) as q:          # answers "nothing" at once
        w = Worker(q, "misbehave.py", tmp_path)
        try:
            assert q.wait_for(lambda f: len(f.takes) > 0, 30)
            time.sleep(3)
            assert len(q.takes) < 40, len(q.takes)   # runpod-python makes thousands here
            assert w.stop() == 0
        finally:
            if w.proc.poll() is None:
                w.proc.kill()
    with FakeRunPod(long_poll=0.0, fault=lambda kind, n: "500" if kind == "take" else None) as q:
        w = Worker(q, "misbehave.py", tmp_path)
        try:
            assert q.wait_for(lambda f: f.counts["take"] > 0, 30)
            time.sleep(3)
            assert q.counts["take"] < 12, q.counts["take"]
            assert "job take failed" in w.text()
            assert w.stop() == 0
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_sigterm_during_a_job_finishes_and_reports_it(fake, start):
    w = start()
    fake.add_jobs([{"id": "running", "input": {"do": "sleep", "seconds": 1.5}},
                   {"id": "queued", "input": {"do": "ok"}}])
    assert fake.wait_for(lambda f: any(ids == ["running"] for _, ids in f.takes), 30)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0, w.text()
    assert fake.finals["running"][0].get("output") == "slept", w.text()
    assert not fake.finals.get("queued")           # never taken: still the platform's
    assert list(fake.queue)[0]["id"] == "queued"


def test_sigterm_past_the_grace_period_fails_the_job_and_exits(fake, start):
    w = start(WORKER_SHUTDOWN_GRACE="0.5")
    fake.add_jobs([{"id": "stuck", "input": {"do": "sleep", "seconds": 60}}])
    assert fake.wait_for(lambda f: any(ids == ["stuck"] for _, ids in f.takes), 30)
    time.sleep(0.3)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0
    info = json.loads(fake.finals["stuck"][0]["error"])
    assert "stopped (shutdown)" in info["error_message"]


def test_second_signal_stops_at_once(fake, start):
    w = start()
    fake.add_jobs([{"id": "stuck", "input": {"do": "sleep", "seconds": 60}}])
    assert fake.wait_for(lambda f: any(ids == ["stuck"] for _, ids in f.takes), 30)
    assert fake.wait_for(lambda f: any("stuck" in str(p) for p in f.pings), 30)   # running
    w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30          # the first signal is taken (its line is out)
    while "SIGTERM: no new jobs" not in w.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(10) == 1
    assert "second signal" in w.text()


def test_setup_failure_reports_unhealthy_and_exits_1(fake, start):
    w = start("raise_at_import.py")
    assert w.proc.wait(60) == 1
    assert any(q.get("status") == ["unhealthy"] for q in fake.pings)
    assert "model weights missing" in w.text()


def test_json_log_lines_with_the_job_id_on_runpod(fake, start):
    w = start(RUNPOD_ENDPOINT_ID="ep-test")
    fake.add_jobs([{"id": "logged", "input": {"do": "print"}}])
    fake.wait_final(["logged"])
    assert w.stop() == 0
    lines = [json.loads(line) for line in w.text().splitlines() if line.startswith("{")]
    assert any(l["requestId"] == "logged" and l["message"] == "job taken" for l in lines)
    assert any(l["requestId"] == "logged" and "from print" in l["message"] for l in lines)
    assert all(set(l) == {"requestId", "message", "level"} for l in lines)


def test_settings_given_only_to_start_reach_the_queue_source(fake, start):
    """max_result_mb and refresh_stops_pod from the start() dict, with nothing in the
    environment: the source reads the one effective Settings, not a copy of its own."""
    w = start("start_settings.py")
    fake.add_jobs([{"id": "small", "input": {}}, {"id": "big", "input": {"big": True}},
                   {"id": "fresh", "input": {"refresh": True}}])
    finals = fake.wait_final(["small", "big", "fresh"])
    info = json.loads(finals["big"]["error"])
    assert info["error_type"] == "ResultTooLarge" and "limit is 0.01 MiB" in info["error_message"]
    assert "output" not in finals["big"]
    assert finals["fresh"]["stopPod"] is True
    assert "stopPod" not in finals["small"]
    assert w.stop() == 0


def test_a_queue_gone_at_the_stop_does_not_hold_the_exit_past_the_stops_budget(fake, start):
    """A platform's stop timeout covers grace + 2 x stop grace + 1 s (docs/docker.md "Stopping"):
    a result that cannot reach the queue is retried within that, then named in the log,
    and the worker exits 0 before the platform would kill it (it retried for 15 s)."""
    w = start(WORKER_SHUTDOWN_GRACE="0.5", WORKER_STOP_GRACE="0.5")
    fake.add_jobs([{"id": "stuck", "input": {"do": "sleep", "seconds": 60}}])
    assert fake.wait_for(lambda f: any(ids == ["stuck"] for _, ids in f.takes), 30)
    assert fake.wait_for(lambda f: any("stuck" in str(p) for p in f.pings), 30)   # running
    fake.pause(cut=True)
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0
    took = time.monotonic() - t0
    assert took < 0.5 + 2 * 0.5 + 1 + 2, (took, w.text()[-3000:])    # + the exit's own time
    assert "result NOT delivered before exit" in w.text(), w.text()[-2500:]


def test_a_queue_that_hangs_at_the_stop_does_not_hold_the_exit_past_the_stops_budget(fake, start):
    """A kept result (its posts answered 500) meets, at the stop, a queue that takes the
    post and never answers: no try outlasts the stop's budget (a post waited up to 60 s
    for its answer, twice), the result is named as not delivered, and the exit is 0."""
    fake.fail_results("kept", times=10_000)
    w = start(WORKER_SHUTDOWN_GRACE="0.5", WORKER_STOP_GRACE="0.5")
    fake.add_jobs([{"id": "kept", "input": {"do": "ok"}}])
    deadline = time.monotonic() + 60
    while "could not be delivered" not in w.text():
        assert time.monotonic() < deadline and w.proc.poll() is None, w.text()[-3000:]
        time.sleep(0.05)
    fake.job_fault = lambda kind, job_id: "hang" if kind == "done" else None
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0
    took = time.monotonic() - t0
    assert took < 0.5 + 2 * 0.5 + 1 + 2, (took, w.text()[-3000:])
    assert "result NOT delivered before exit" in w.text()
