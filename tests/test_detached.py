"""Nothing a job starts outlives its stop, and every process the worker or a child adopts
is reaped (issue 36). A job's processes that leave its child's process group (a new
session, a double-forked daemon) stay below the child, which reaps the orphans it adopts
without taking its own code's exit statuses; when the child ends (a stop, a refresh, a
shutdown) they come to the worker, which ends and reaps them."""
import os
import time

import psutil
import pytest

from tests.support import Server


def gone(pid: int) -> bool:
    """Not running, not a zombie: ended and reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE and False
    except psutil.NoSuchProcess:
        return True


def until(predicate, timeout=20.0, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def command(proc) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def zombies_under(pid: int) -> list:
    try:
        return [p.pid for p in psutil.Process(pid).children()
                if p.status() == psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(**env):
        s = Server("detacher.py", tmp_path, **env)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def run_job(s, inp, timeout_s=None):
    body = {"input": inp}
    if timeout_s:
        body["policy"] = {"executionTimeout": int(timeout_s * 1000)}
    return s.post("/runsync", body).json()


@pytest.mark.parametrize("stop", ["timeout", "refresh", "cancel"])
def test_a_jobs_detached_processes_end_with_its_stop(server, tmp_path, stop):
    s = server()
    if stop == "refresh":
        out = run_job(s, {"refresh": True})
        assert out["status"] == "COMPLETED", out
        pids = out["output"]["pids"]
    else:
        job = s.post("/run", {"input": {"sleep": 600}, "policy": {
            "executionTimeout": 3000 if stop == "timeout" else 600_000}}).json()["id"]
        # the pids are not out before the end: find them as the child's descendants
        found = {}

        def started():
            child = s.get("/health").json()["worker"]["child"]["pid"]
            found.update(child=child, pids=[p.pid for p in psutil.Process(child).children(
                recursive=True) if "sleep(600)" in command(p)])
            return len(found["pids"]) == 2
        until(started, what="the job's two processes")
        if stop == "cancel":
            s.post(f"/cancel/{job}")
        final = s.until(job, lambda st: st["status"] not in ("IN_QUEUE", "IN_PROGRESS"),
                        60)
        assert final["status"] == ("TIMED_OUT" if stop == "timeout" else "CANCELLED")
        pids = dict(enumerate(found["pids"]))
    for name, pid in pids.items():
        until(lambda: gone(pid), what=f"{name} ({pid}) outlived its job's stop")
    worker = s.proc.pid
    until(lambda: not zombies_under(worker), what="the worker reaps what it adopted")
    assert run_job(s, {"session": False, "daemon": False})["status"] == "COMPLETED"
    assert "left behind by a child that ended" in s.log.read_text()


def test_a_child_reaps_its_orphans_but_not_its_own_processes(server):
    s = server()
    daemons = []
    for _ in range(5):       # each leaves a daemon that exits soon after: an orphan
        out = run_job(s, {"session": False, "live": 0.2})
        assert out["status"] == "COMPLETED", out
        daemons.append(out["output"]["pids"]["daemon"])
    child = out["output"]["child"]
    for pid in daemons:
        until(lambda: gone(pid), what=f"daemon {pid} exited and was not reaped")
    assert not zombies_under(child)
    # Its own process, a zombie for two sweeps before the job waits for it: its status
    # is its own, not stolen (a stolen one reads as 0).
    out = run_job(s, {"session": False, "daemon": False, "own_exit": 3})
    assert out["output"]["pids"]["own_status"] == 3, out


def test_the_worker_ends_what_its_children_leave_at_shutdown(server):
    s = server()
    out = run_job(s, {"live": 600})
    pids = out["output"]["pids"]
    assert all(psutil.pid_exists(p) for p in pids.values())
    s.close()
    for name, pid in pids.items():
        until(lambda: gone(pid), what=f"{name} ({pid}) outlived the worker")


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_a_job_stopped_in_a_live_child_takes_its_processes_along(tmp_path, stop):
    """An async task cancelled or timed out: the child goes on, the job's processes end,
    the one its module started at import serves on."""
    s = Server("detacher_async.py", tmp_path)
    try:
        job = s.post("/run", {"input": {"sleep": 600}, "policy": {
            "executionTimeout": 3000 if stop == "timeout" else 600_000}}).json()["id"]
        until(lambda: "pids {" in s.log.read_text(), what="the job's processes started")
        line = s.log.read_text().split("pids ", 1)[1].splitlines()[0]
        pids = eval(line)           # the handler's own dict of ints
        if stop == "cancel":
            s.post(f"/cancel/{job}")
        final = s.until(job, lambda st: st["status"] not in ("IN_QUEUE", "IN_PROGRESS"), 60)
        assert final["status"] == ("TIMED_OUT" if stop == "timeout" else "CANCELLED")
        for name in ("session", "daemon"):
            until(lambda: gone(pids[name]), what=f"{name} outlived its job's stop")
        after = s.post("/runsync", {"input": {"live": 0.1}}).json()
        assert after["output"]["child"] == pids["child"]          # the child lived on
        assert psutil.pid_exists(pids["server"]) and not gone(pids["server"])
    finally:
        s.close()
    until(lambda: gone(pids["server"]), what="the import's process outlived the worker")


def test_a_process_that_keeps_forking_itself_anew_ends_with_its_job(server, tmp_path):
    """Each copy forks the next and exits: the worker finds it a zombie almost every time
    it looks, and must end its group (sweeping again at once while adoptions come)."""
    s = server()
    count = tmp_path / "generations"
    out = s.post("/runsync", {"input": {"hop": str(count), "session": False,
                                        "daemon": False, "sleep": 600},
                              "policy": {"executionTimeout": 3000}}).json()
    assert out["status"] == "TIMED_OUT", out
    seen = [None]

    def stopped():          # no new generation since the last look (a look every 0.5 s)
        now = count.read_text() if count.exists() else ""
        same, seen[0] = now == seen[0], now
        time.sleep(0.45)
        return same
    until(stopped, what="the hopper outlived its job's stop")
    until(lambda: not zombies_under(s.proc.pid), what="the worker reaps the hopper's copies")
    assert run_job(s, {"session": False, "daemon": False})["status"] == "COMPLETED"


def test_a_process_the_worker_had_before_is_not_ended(tmp_path):
    """A start script's sidecar (`sidecar & exec python -m worker ...`) is a child of the
    worker's process from its start, not something a job left: it lives through a child's
    exit and the worker's."""
    import subprocess
    import requests
    from tests.support import HANDLERS, PYTHON, _free_port
    port = _free_port()
    script = (f"sleep 600 & echo $! > {tmp_path}/sidecar; exec {PYTHON} -m worker serve "
              f"{HANDLERS / 'detacher.py'} --rp_api_port {port}")
    with open(tmp_path / "log", "w") as out:
        proc = subprocess.Popen(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "WORKER_STOP_GRACE": "1",
                                     "WORKER_SHUTDOWN_GRACE": "1"})
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(url + "/health", timeout=1).json()["worker"]["child"]
        except (requests.RequestException, KeyError, ValueError):
            return False
    try:
        until(up, 60, "the worker did not start")
        sidecar = int((tmp_path / "sidecar").read_text())
        out = requests.post(url + "/runsync", json={"input": {"refresh": True}}, timeout=60)
        assert out.json()["status"] == "COMPLETED"
        for pid in out.json()["output"]["pids"].values():
            until(lambda: gone(pid), what=f"{pid} outlived its child")
        assert not gone(sidecar)
        proc.terminate()
        assert proc.wait(30) == 0
        assert not gone(sidecar)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.kill(int((tmp_path / "sidecar").read_text()), 9)
        except (OSError, ValueError):
            pass
