"""The SDK's realtime port, and RunPod load-balancing endpoints (/ping from the
supervisor's state, no queue), over real HTTP."""
import os
import subprocess
import time

import pytest
import requests

from tests.support import HANDLERS, PYTHON, _free_port, gone


class Started:
    def __init__(self, handler, tmp_path, args=(), **env):
        self.log = tmp_path / "worker.log"
        full = {**os.environ, "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": "1",
                **{k: str(v) for k, v in env.items()}}
        full.pop("RUNPOD_WEBHOOK_GET_JOB", None)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([PYTHON, "-m", "worker", str(HANDLERS / handler),
                                          *args], env=full, stdout=out,
                                         stderr=subprocess.STDOUT)

    def get(self, url):
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            assert self.proc.poll() is None, self.log.read_text()
            return None

    def until(self, url, code, timeout=60):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            r = self.get(url)
            seen.append(r and r.status_code)
            if r is not None and r.status_code == code:
                return r
            time.sleep(0.05)
        raise AssertionError(f"{url} never answered {code}: {seen[-5:]}\n"
                             + self.log.read_text())

    def status_until(self, url, state, timeout=60):
        deadline = time.monotonic() + timeout
        while (status := requests.get(url, timeout=5).json()["status"]) != state:
            assert time.monotonic() < deadline, f"{url} stayed {status}, never {state}"
            time.sleep(0.02)

    def close(self):
        self.proc.terminate()
        assert self.proc.wait(30) == 0, self.log.read_text()


def test_realtime_port_serves_the_api_on_all_interfaces(tmp_path):
    port = _free_port()
    w = Started("lb_stages.py", tmp_path, GO_FILE=tmp_path / "go", RUNPOD_REALTIME_PORT=port,
                RUNPOD_ENDPOINT_ID="ep-rt")
    (tmp_path / "go").touch()
    try:
        w.until(f"http://127.0.0.1:{port}/health", 200)
        r = requests.post(f"http://127.0.0.1:{port}/runsync", json={"input": {}}, timeout=30)
        assert r.json()["status"] == "COMPLETED" and r.json()["output"] == {"done": True}
        rt = requests.post(f"http://127.0.0.1:{port}/ep-rt/realtime",
                           json={"id": "abc", "input": {}}, timeout=30)
        assert rt.json() == {"output": {"done": True}}       # the SDK's realtime answer
        assert _listens_on_all(w.proc.pid, port)
    finally:
        w.close()


def _listens_on_all(pid, port) -> bool:
    import psutil
    return any(c.laddr.port == port and c.laddr.ip in ("0.0.0.0", "::")
               for c in psutil.Process(pid).net_connections("tcp"))


@pytest.mark.parametrize("same_port", [False, True], ids=["PORT_HEALTH", "one port"])
def test_ping_follows_the_child_204_200_503(tmp_path, same_port):
    port = _free_port()
    health = port if same_port else _free_port()
    go = tmp_path / "go"
    w = Started("lb_stages.py", tmp_path, GO_FILE=go, PORT=port, PORT_HEALTH=health)
    ping = f"http://127.0.0.1:{health}/ping"
    try:
        first = w.until(ping, 204)              # setup waits for the go file: initialising
        assert first.content == b""
        go.touch()
        assert w.until(ping, 200).json() == {"status": "healthy"}
        done = requests.post(f"http://127.0.0.1:{port}/runsync",
                             json={"input": {"refresh": True}}, timeout=30).json()
        assert done["status"] == "COMPLETED"
        # the refreshed child's setup fails: the worker cannot run jobs any more
        assert w.until(ping, 503).json()["status"] == "unhealthy"
        r = requests.post(f"http://127.0.0.1:{port}/runsync", json={"input": {}}, timeout=30)
        assert r.status_code == 503
    finally:
        w.close()


def test_a_job_beyond_capacity_is_refused_at_once(tmp_path):
    port = _free_port()
    go, hold = tmp_path / "go", tmp_path / "hold"
    go.touch()
    w = Started("lb_stages.py", tmp_path, ["--load_balancer"], GO_FILE=go, PORT=port)
    base = f"http://127.0.0.1:{port}"
    try:
        w.until(f"{base}/ping", 200)
        job = requests.post(f"{base}/run", json={"input": {"hold": str(hold)}}, timeout=30)
        job_id = job.json()["id"]
        w.status_until(f"{base}/status/{job_id}", "IN_PROGRESS")
        busy = requests.post(f"{base}/runsync", json={"input": {}}, timeout=30)
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert "no queue" in busy.json()["error"]
        hold.touch()
        w.status_until(f"{base}/status/{job_id}", "COMPLETED")
        after = requests.post(f"{base}/runsync", json={"input": {}}, timeout=30)
        assert after.status_code == 200 and after.json()["status"] == "COMPLETED"
    finally:
        w.close()
    assert gone(w.proc.pid)


def test_load_balancing_is_off_on_the_runpod_queue(tmp_path):
    """PORT_HEALTH alone selects load balancing only outside the queue."""
    from tests.fake_runpod import FakeRunPod
    from tests.support import Worker
    with FakeRunPod() as queue:
        queue.add_jobs([{"id": "q1", "input": {}}])
        (tmp_path / "go").touch()
        worker = Worker(queue, "lb_stages.py", tmp_path, GO_FILE=tmp_path / "go",
                        PORT_HEALTH=_free_port())
        assert queue.wait_final(["q1"])["q1"] == {"output": {"done": True}}
        assert worker.stop() == 0
