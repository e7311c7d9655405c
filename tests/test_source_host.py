"""One source host for every source (sources/host.py): the same signals and the same stop
bound, whether jobs come from the one-shot test, the local API or the RunPod queue.
Real processes, real signals."""
import os
import signal
import subprocess
import time

import psutil

from tests.support import FAST, HANDLERS, PYTHON, Server, gone
from worker.config import Settings
from worker.jobs import JobState
from worker.sources.host import SourceHost
from worker.targets import ScriptTarget


def _wait_in(path, text, proc, timeout=60):
    """Wait until `text` is in the file the process writes (or it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text() or proc.poll() is not None:
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never came:\n{path.read_text()}")


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def test_the_stop_bound_covers_a_child_that_ignores_every_courtesy():
    """A job that swallows the Stop message, SIGUSR1 and SIGTERM: the host's stop ends
    the supervisor within its one bound (the grace, each step of the stop, a margin)."""
    settings = Settings(**{**FAST, "stop_grace": 0.5})
    host = SourceHost(settings, ScriptTarget(str(HANDLERS / "misbehave.py"), []))
    sup = host.start()
    from tests.support import Collector
    listener = Collector()
    sup.submit({"id": "swallow", "input": {"do": "swallow"}}, listener)
    sup.wait_until(lambda s: "swallow" in s.running, 60)
    pid = sup.child_pid
    t0 = time.monotonic()
    assert host.stop(0.5)
    assert time.monotonic() - t0 <= host.stop_bound(0.5)
    assert listener.wait(["swallow"])["swallow"].state is JobState.FAILED
    assert gone(pid)


def test_one_shot_a_signal_stops_the_job_shows_it_and_exits_1(tmp_path):
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "worker", str(HANDLERS / "edges.py"), "--test_input",
             '{"input": {"do": "print", "n": 100000, "gap": 0.05}}'],
            stdout=out, stderr=subprocess.STDOUT, env={**_env(), "WORKER_STOP_GRACE": "1"})
    try:
        _wait_in(log, "local_test line 1", proc)
        children = _children(proc.pid)
        proc.send_signal(15)
        assert proc.wait(30) == 1
        text = log.read_text()
        assert "SIGTERM: the job is stopped" in text
        assert "--- job local_test FAILED (worker_lost)" in text, text
        assert all(gone(c.pid) for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()


def signal_another_thread(pid: int, sig: int) -> None:
    """kill(2) with the id of one of the process's threads other than the main one: the
    signal is the process's, and the kernel hands it to that thread."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    os.kill(max(tids), sig)


def test_local_api_stops_on_a_signal_the_kernel_hands_to_a_thread_not_the_main_one(tmp_path):
    """Python runs a signal's handler in the main thread only: one waiting where a signal
    cannot wake it would never stop the server."""
    server = Server("edges.py", tmp_path)
    try:
        server.health_until(lambda w: w["child"] and w["child"]["state"] == "ready")
        signal_another_thread(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(20) == 0
        assert "SIGTERM: the server stops" in server.log.read_text()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_local_api_a_second_signal_stops_at_once_and_takes_the_children(tmp_path):
    server = Server("edges.py", tmp_path, WORKER_SHUTDOWN_GRACE="60")
    try:
        job = server.post("/run", {"input": {"do": "sleep", "seconds": 120}}).json()["id"]
        server.until(job, lambda s: s["status"] == "IN_PROGRESS")
        children = _children(server.proc.pid)
        server.proc.send_signal(15)
        _wait_in(server.log, "SIGTERM: the server stops", server.proc)
        assert server.proc.poll() is None          # running jobs have their grace
        server.proc.send_signal(15)
        assert server.proc.wait(10) == 1
        assert "second signal" in server.log.read_text()
        assert children and all(gone(c.pid) for c in children)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_local_api_first_signal_lets_the_running_job_finish(tmp_path):
    server = Server("edges.py", tmp_path, WORKER_SHUTDOWN_GRACE="30")
    try:
        job = server.post("/run", {"input": {"do": "sleep", "seconds": 1.0}}).json()["id"]
        server.until(job, lambda s: s["status"] == "IN_PROGRESS")
        server.proc.send_signal(15)
        assert server.proc.wait(30) == 0, server.log.read_text()
        assert "job COMPLETED" in server.log.read_text()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def _env():
    import os
    env = dict(os.environ)
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return env


def test_local_api_a_job_past_the_grace_is_answered_failed_before_the_server_ends(tmp_path):
    """A container's stop gives the worker a fixed time: a job still running when the grace
    ends must reach its clients as FAILED (the /runsync still waiting, a /run's webhook),
    not as a connection closed without an answer."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support import Hook
    hook = Hook()
    server = Server("edges.py", tmp_path, WORKER_SHUTDOWN_GRACE="1", WORKER_CHILDREN="2")
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(server.post, "/runsync",
                                  {"input": {"do": "sleep", "seconds": 120}})
            job = server.post("/run", {"input": {"do": "sleep", "seconds": 120},
                                       "webhook": hook.url}).json()["id"]
            server.until(job, lambda s: s["status"] == "IN_PROGRESS")
            _until(lambda: server.get("/health").json()["jobs"]["inProgress"] == 2)
            server.proc.send_signal(15)
            answer = waiting.result(60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "FAILED" and "shutdown" in answer.json()["error"]
        _, posted = hook.wait(1)[0]
        assert posted["id"] == job and posted["status"] == "FAILED"
        assert server.proc.wait(30) == 0, server.log.read_text()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def _until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "never came"
        time.sleep(0.05)


def test_a_stop_that_escalates_does_not_spin_the_supervisors_loop(tmp_path):
    """Past the grace, a child that swallows every interruption is stopped step by step.
    Between the steps the loop sleeps: the grace's end, already past, is no clock to wake
    for (it woke at once, again and again, and took each wake for a stop of the worker)."""
    server = Server("misbehave.py", tmp_path, WORKER_SHUTDOWN_GRACE="0.5",
                    WORKER_STOP_GRACE="1.5")
    try:
        job = server.post("/run", {"input": {"do": "swallow"}}).json()["id"]
        server.until(job, lambda s: s["status"] == "IN_PROGRESS")
        parent = psutil.Process(server.proc.pid)
        server.proc.send_signal(15)
        _wait_in(server.log, "stopping child", server.proc)
        before = parent.cpu_times()
        _wait_in(server.log, "sending SIGTERM", server.proc)
        after = parent.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert server.proc.wait(30) == 0, server.log.read_text()[-3000:]
        text = server.log.read_text()
        assert busy < 0.5, f"the parent used {busy:.2f}s of CPU in a 1.5s wait"
        assert "the worker itself was stopped" not in text, text[-3000:]
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_local_api_a_webhook_that_hangs_does_not_hold_the_exit_past_the_stops_budget(tmp_path):
    """A receiver that takes the connection and never answers: the stop's budget (grace
    + 2 x stop grace + 1 s) ends its tries, the log says so, and the worker exits 0 in
    time for a platform's stop timeout (it waited for every try: 4 x 10 s)."""
    import socket
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)                        # accepted by the kernel, never answered
    url = f"http://127.0.0.1:{hang.getsockname()[1]}/hook"
    server = Server("edges.py", tmp_path, WORKER_SHUTDOWN_GRACE="0.5", WORKER_STOP_GRACE="0.5")
    try:
        job = server.post("/run", {"input": {"do": "sleep", "seconds": 0.1},
                                   "webhook": url}).json()["id"]
        server.until(job, lambda s: s["status"] == "COMPLETED")
        t0 = time.monotonic()
        server.proc.send_signal(15)
        assert server.proc.wait(60) == 0, server.log.read_text()[-3000:]
        took = time.monotonic() - t0
        assert took < 0.5 + 2 * 0.5 + 1 + 2, (took, server.log.read_text()[-3000:])
        assert "webhooks still trying at the end of the stop's budget" in server.log.read_text()
    finally:
        hang.close()
        if server.proc.poll() is None:
            server.proc.kill()


def test_local_api_from_the_first_signal_new_jobs_and_ping_get_503(tmp_path):
    """While the running job has its grace, the server still answers (its clients wait
    for their answers) but takes no new job and tells a load balancer it is going: 503
    with Retry-After, not a job accepted only to fail."""
    server = Server("edges.py", tmp_path, WORKER_SHUTDOWN_GRACE="60")
    try:
        job = server.post("/run", {"input": {"do": "sleep", "seconds": 120}}).json()["id"]
        server.until(job, lambda s: s["status"] == "IN_PROGRESS")
        server.proc.send_signal(15)
        _wait_in(server.log, "SIGTERM: the server stops", server.proc)
        refused = server.post("/run", {"input": {"do": "sleep", "seconds": 0}})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "stopping" in refused.text
        assert server.get("/ping").status_code == 503
        assert server.get(f"/status/{job}").json()["status"] == "IN_PROGRESS"
        server.proc.send_signal(15)
        assert server.proc.wait(30) == 1
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
