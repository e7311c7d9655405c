"""Faults in the queue and signals at bad moments, against the stand-in RunPod queue."""
import json
import signal
import time

import psutil

from tests.fake_runpod import FakeRunPod
from tests.support import Worker


def test_queue_down_during_a_job_result_is_delivered_once_it_is_back(fake, start):
    w = start()
    fake.add_jobs([{"id": "slow", "input": {"do": "sleep", "seconds": 1.0}}])
    assert fake.wait_for(lambda f: any(ids == ["slow"] for _, ids in f.takes), 30)
    fake.pause()                 # refused connections: the result cannot be posted
    time.sleep(3)
    fake.resume()
    final = fake.wait_final(["slow"], timeout=60)["slow"]
    assert final["output"] == "slept" and len(fake.finals["slow"]) == 1
    fake.add_jobs([{"id": "next", "input": {"do": "ok"}}])
    fake.wait_final(["next"], timeout=60)
    assert w.stop() == 0


def test_slow_answers_are_waited_for(tmp_path):
    slow = lambda kind, n: "slow" if kind in ("done", "take") and n <= 3 else None  # noqa
    with FakeRunPod(long_poll=0.3, fault=slow) as q:
        w = Worker(q, "misbehave.py", tmp_path)
        try:
            q.add_jobs([{"id": f"s{i}", "input": {"do": "ok"}} for i in range(5)])
            q.wait_final([f"s{i}" for i in range(5)], timeout=60)
            assert all(len(q.finals[f"s{i}"]) == 1 for i in range(5))
            assert w.stop() == 0
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_a_job_delivered_twice_while_it_runs_runs_once(fake, start):
    w = start("conc_async.py")
    job = {"id": "dup", "input": {"delay": 0.5}}
    fake.add_jobs([job, dict(job), {"id": "other", "input": {"delay": 0.1}}])
    fake.wait_final(["dup", "other"], timeout=30)
    time.sleep(1.0)                     # a second run of "dup" would have posted by now
    assert len(fake.finals["dup"]) == 1
    assert "delivered again while it runs" in w.text()
    assert w.stop() == 0


def test_malformed_jobs_from_the_queue(fake, start):
    w = start()
    fake.add_jobs([b"{this is not json", b"[" * 50_000 + b"]" * 50_000,
                   b'["not a job object"]', {"input": {"no": "id"}},
                   {"id": "no-input"}, {"id": "bad id/../x", "input": {}},
                   {"id": "fine", "input": {"do": "ok"}}])
    finals = fake.wait_final(["no-input", "fine"], timeout=60)
    assert "no 'input'" in json.loads(finals["no-input"]["error"])["error_message"]
    assert "output" in finals["fine"]
    assert w.proc.poll() is None          # still serving
    assert w.stop() == 0
    assert "without an id" in w.text()


def test_the_worker_is_idle_while_the_queue_is_empty(fake, start):
    w = start()
    parent = psutil.Process(w.proc.pid)
    assert fake.wait_for(lambda f: len(f.takes) > 0, 30)
    time.sleep(0.5)
    procs = [parent, *parent.children(recursive=True)]
    before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    time.sleep(3)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    assert after - before < 0.3, f"{after - before:.2f} s of CPU in 3 s with nothing to do"
    assert w.stop() == 0


def test_sigterm_during_setup_exits_cleanly(fake, start):
    w = start("slow_setup.py")
    time.sleep(1.0)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert not fake.finals


def test_sigterm_during_a_refresh(fake, start):
    w = start()
    fake.add_jobs([{"id": "r", "input": {"do": "refresh"}}])
    fake.wait_final(["r"], timeout=30)
    w.proc.send_signal(signal.SIGTERM)     # the child is being replaced right now
    assert w.proc.wait(30) == 0
    assert len(fake.finals["r"]) == 1


def test_an_answer_already_arriving_is_not_cut_by_a_stop():
    """SIGTERM while the queue's answer is on its way: the platform has handed the job to
    this worker, so the take finishes reading it (and the job runs or is reported)."""
    import socket as _socket
    import threading as _threading
    import time as _time
    from worker.sources.runpod_take import TakeClient

    server = _socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    headers_sent, release = _threading.Event(), _threading.Event()
    body = b'{"id": "in-flight", "input": {}}'

    def answer():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        headers_sent.set()
        release.wait(10)
        conn.sendall(body)
        conn.close()

    _threading.Thread(target=answer, daemon=True).start()
    client = TakeClient({})
    got = {}
    taker = _threading.Thread(target=lambda: got.update(
        answer=client.get(f"http://127.0.0.1:{server.getsockname()[1]}/job-take/w1")))
    taker.start()
    assert headers_sent.wait(10)
    deadline = _time.monotonic() + 10
    while not client._answering:        # the status line has been read: the answer is here
        assert _time.monotonic() < deadline
        _time.sleep(0.005)
    client.abort()
    release.set()
    taker.join(10)
    server.close()
    assert got["answer"] == (200, "application/json", body)


def test_a_job_the_queue_hands_out_just_after_a_stop_is_reported_not_lost(tmp_path):
    """SIGTERM while the take long-polls, and the platform hands a job to that take a
    moment later (it had committed it before it saw the worker go): the worker starts no
    new take but reads that one, and the job is reported once (found by the soak: cutting
    the take at once lost one job per SIGTERM)."""
    with FakeRunPod(long_poll=5) as q:
        w = Worker(q, "misbehave.py", tmp_path, WORKER_SHUTDOWN_GRACE="10")
        try:
            assert q.wait_for(lambda f: f.counts["take"] > 0, 60)     # idle, in its take
            w.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "SIGTERM: no new jobs" not in w.text():
                assert time.monotonic() < deadline, w.text()
                time.sleep(0.01)
            q.add_jobs([{"id": "late", "input": {"do": "ok"}}])
            assert w.proc.wait(30) == 0, w.text()
            assert [ids for _, ids in q.takes] == [["late"]]           # it went out
            assert len(q.finals["late"]) == 1, (q.finals, w.text())   # and came back once
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_results_held_at_a_stop_outlast_a_queue_that_is_away_for_seconds(tmp_path):
    """SIGTERM while a job runs, and the queue goes away (every connection cut) for 3 s:
    the worker keeps trying its result until the queue is back, within its flush time,
    and delivers it once (found by the attack on the soak: a stopping worker gave up
    after five tries 0.1 s apart and exited without the result)."""
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "misbehave.py", tmp_path, WORKER_SHUTDOWN_GRACE="10")
        try:
            q.add_jobs([{"id": "held", "input": {"do": "sleep", "seconds": 0.8}}])
            assert q.wait_for(lambda f: "held" in f.taken_by, 60)
            q.pause(cut=True)
            w.proc.send_signal(signal.SIGTERM)
            time.sleep(3)              # the outage itself: the worker must outlast it
            q.resume()
            assert w.proc.wait(60) == 0, w.text()
            assert len(q.finals["held"]) == 1, w.text()
            assert q.finals["held"][0]["output"] == "slept"
        finally:
            if w.proc.poll() is None:
                w.proc.kill()


def test_a_result_in_the_redelivery_s_hands_at_a_stop_is_still_delivered(tmp_path):
    """The result ran out of tries and is kept; the redelivery thread has taken it out and
    is posting it when SIGTERM comes; the queue answers that try with a 500 once the
    worker has said it is stopping, and takes the next. The stop waits for the redelivery, which keeps trying within the
    flush time (found by the second attack on the soak: the worker exited at once, the
    result in the thread's hands)."""
    import threading
    in_flight, release = threading.Event(), threading.Event()
    posts = {"n": 0}

    def fault(kind, job_id):
        if kind != "done" or job_id != "kept":
            return None
        posts["n"] += 1
        if posts["n"] <= 5:                 # a round of tries fails: the result is kept
            return "500"
        if posts["n"] == 6:                 # the redelivery's try: held, then refused
            in_flight.set()
            release.wait(30)
            return "500"
        return None
    with FakeRunPod(long_poll=0.3) as q:
        q.job_fault = fault
        w = Worker(q, "misbehave.py", tmp_path)
        try:
            q.add_jobs([{"id": "kept", "input": {"do": "ok"}}])
            assert in_flight.wait(60), w.text()
            w.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "SIGTERM: no new jobs" not in w.text():
                assert time.monotonic() < deadline, w.text()
                time.sleep(0.01)
            release.set()
            assert w.proc.wait(60) == 0, w.text()
            assert len(q.finals["kept"]) == 1, w.text()
        finally:
            release.set()
            if w.proc.poll() is None:
                w.proc.kill()


def test_a_take_over_tls_left_at_a_stop_still_reads_its_answer(tmp_path):
    """RunPod's takes are https. A stop leaves the take in flight; an answer that comes
    after is read (a half-close of the TLS socket, as first built, dropped the TLS layer
    and the answer with it; found by the review)."""
    import shutil
    import socket as _socket
    import ssl
    import subprocess
    import threading as _threading
    from worker.sources.runpod_take import TakeClient

    if not shutil.which("openssl"):
        import pytest
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = _socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    asked, left = _threading.Event(), _threading.Event()
    body = b'{"id": "late", "input": {"pad": "%s"}}' % (b"x" * 300_000)   # many TLS records

    def serve():
        raw, _ = listener.accept()
        with server_ctx.wrap_socket(raw, server_side=True) as conn:
            conn.recv(65536)
            asked.set()
            left.wait(10)                      # the worker has left: now the job comes
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)

    _threading.Thread(target=serve, daemon=True).start()
    client = TakeClient({})
    client_ctx = ssl.create_default_context(cafile=str(cert))
    original = ssl._create_default_https_context     # the test's certificate is trusted
    ssl._create_default_https_context = lambda *a, **kw: client_ctx
    try:
        got = {}
        taker = _threading.Thread(target=lambda: got.update(answer=client.get(
            f"https://127.0.0.1:{listener.getsockname()[1]}/job-take/w1")))
        taker.start()
        assert asked.wait(10)
        client.leave()
        left.set()
        taker.join(10)
    finally:
        ssl._create_default_https_context = original
        listener.close()
    assert got.get("answer") == (200, "application/json", body), got
