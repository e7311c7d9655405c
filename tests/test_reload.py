"""--reload and --watch on real files: a save replaces the child with one running the new
code (a request after the change was seen never gets the old), a broken save answers 503
with the error until a fix, bytecode is never stale, the handler's own files reload
nothing, and the one-shot test runs again on every save."""
import os
import py_compile
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.support import PYTHON, Server
from worker.sources import reload_watch

pytest.importorskip("watchfiles")

HANDLER = '''import json, os, time
import worker
import helper

def handler(job):
    inp = job["input"]
    time.sleep(inp.get("sleep", 0))
    if inp.get("write"):
        with open(os.path.join(os.path.dirname(__file__), "out.json"), "w") as f:
            json.dump(inp, f)
    return {"v": helper.VALUE}

worker.start({"handler": handler})
'''


@pytest.fixture
def code(tmp_path):
    (tmp_path / "handler.py").write_text(HANDLER)
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    return tmp_path


def seen(server, n: int, timeout: float = 30) -> None:
    """Wait until the worker has seen its n-th change (its log says so)."""
    deadline = time.monotonic() + timeout
    while server.log.read_text().count("changed; ") < n:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.02)


def save(path: Path, text: str) -> None:
    path.write_text(text)


def test_a_request_after_a_change_was_seen_gets_the_new_code(code):
    s = Server(str(code / "handler.py"), code, WORKER_RELOAD="true")
    try:
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 1}
        for n in range(2, 6):
            save(code / "helper.py", f"VALUE = {n}\n")
            seen(s, n - 1)
            assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": n}
        text = s.log.read_text()
        assert text.count("the new code is ready") == 4
        assert "first job on the new code ended" in text
        health = s.get("/health").json()
        assert health["reload"]["reloads"] == 4 and health["reload"]["watching"] >= 2
        assert not (code / "__pycache__").exists()      # nothing compiled is written
    finally:
        s.close()


def test_two_saves_in_one_second_never_serve_stale_bytecode(code):
    """Same size, same mtime: a .pyc from the first content would pass Python's check."""
    py_compile.compile(str(code / "helper.py"))          # a .pyc of VALUE = 1 exists
    stamp = os.stat(code / "helper.py").st_mtime_ns
    s = Server(str(code / "handler.py"), code, WORKER_RELOAD="true")
    try:
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 1}
        save(code / "helper.py", "VALUE = 7\n")
        os.utime(code / "helper.py", ns=(stamp, stamp))
        seen(s, 1)
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 7}
    finally:
        s.close()


def test_a_running_job_ends_on_the_old_code_and_the_next_waits_for_the_new(code):
    s = Server(str(code / "handler.py"), code, WORKER_RELOAD="true")
    try:
        job = s.post("/run", {"input": {"sleep": 1.5}}).json()["id"]
        s.until(job, lambda st: st["status"] == "IN_PROGRESS")
        save(code / "helper.py", "VALUE = 2\n")
        seen(s, 1)
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 2}
        assert s.until(job, lambda st: st["status"] == "COMPLETED")["output"] == {"v": 1}
    finally:
        s.close()


def test_a_broken_save_answers_503_with_the_error_until_a_fix(code):
    s = Server(str(code / "handler.py"), code, WORKER_RELOAD="true")
    try:
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 1}
        save(code / "helper.py", "VALUE = (\n")
        s.health_until(lambda w: w["state"] == "setup_failed")
        r = requests.post(s.url + "/runsync", json={"input": {}}, timeout=10)
        assert r.status_code == 503 and "SyntaxError" in r.json()["error"]
        health = s.get("/health")
        assert health.status_code == 503 and "SyntaxError" in health.json()["worker"]["failure"]
        assert "SyntaxError" in health.json()["reload"]["last"]["error"]
        save(code / "helper.py", "VALUE = 3\n")
        s.health_until(lambda w: w["state"] == "running" and w["child"] is not None)
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 3}
        text = s.log.read_text()
        assert text.count("handler setup failed: SyntaxError") == 1       # shown once
        assert text.count("never closed") >= 1
        for n in range(4, 11):          # more broken saves than the restart breaker allows
            before = s.log.read_text().count("does not set up")
            save(code / "helper.py", f"VALUE = ({n}\n")
            deadline = time.monotonic() + 30
            while s.log.read_text().count("does not set up") == before:
                assert time.monotonic() < deadline, s.log.read_text()
                time.sleep(0.02)
        save(code / "helper.py", "VALUE = 11\n")
        s.health_until(lambda w: w["state"] == "running" and w["child"] is not None)
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 11}
    finally:
        s.close()


def test_the_handler_s_own_files_reload_nothing_but_included_patterns_do(code):
    s = Server(str(code / "handler.py"), code, WORKER_RELOAD="true",
               WORKER_RELOAD_INCLUDE="*.yaml", WORKER_RELOAD_EXCLUDE="skip_*.py")
    try:
        for i in range(3):
            assert s.post("/runsync", {"input": {"write": i}}).json()["output"] == {"v": 1}
        (code / "notes.txt").write_text("not code")
        (code / "skip_me.py").write_text("x = 1")
        (code / "config.yaml").write_text("a: 1")
        seen(s, 1)
        text = s.log.read_text()
        assert "reload: config.yaml changed" in text and "out.json" not in text
        assert text.count("changed; ") == 1
    finally:
        s.close()


@pytest.mark.parametrize("args, env, says", [
    (["--reload"], {"RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:9/job-take/$ID"},
     "a queue worker takes new code by a new deploy"),
    (["--reload"], {"WORKER_QUEUE_URL": "redis://127.0.0.1:9/0", "WORKER_ENDPOINT": "e"},
     "a queue worker takes new code by a new deploy"),
    (["--reload", "--test_input", '{"input": {}}'], {}, "runs again on every save with --watch"),
    (["--rp_serve_api", "--watch"], {}, "the local API reloads with --reload"),
])
def test_reload_is_refused_where_it_cannot_work(code, args, env, says):
    full = {**os.environ, **env}
    r = subprocess.run([PYTHON, "-m", "worker", str(code / "handler.py"), *args], env=full,
                       capture_output=True, text=True, timeout=60, cwd=code)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_watch_runs_the_test_input_again_on_every_save(code):
    log = code / "watch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([PYTHON, "-m", "worker", str(code / "handler.py"),
                                 "--test_input", '{"input": {"sleep": 0.2}}', "--watch"],
                                cwd=code, stdout=out, stderr=subprocess.STDOUT)

    def until(text, n=1, timeout=60):
        deadline = time.monotonic() + timeout
        while log.read_text().count(text) < n:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    try:
        until("--- run 1: COMPLETED")
        until("save to run again")
        save(code / "helper.py", "VALUE = 2\n")
        until("--- run 2: COMPLETED")
        text = log.read_text()
        assert '"v": 2' in text[text.index("--- run 2: job"):text.index("--- run 2: COMPL")]
        (code / "handler.py").write_text(HANDLER.replace('inp.get("sleep", 0)', "30"))
        until("--- run 3: job")
        save(code / "helper.py", "VALUE = 4\n")          # lands mid-run
        until("run 3 stopped: a save came")
        until("--- run 4: job")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_watch_set_and_the_polling_choice(tmp_path):
    (tmp_path / "h.py").write_text("")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "m.py").write_text("")
    w = reload_watch.WatchSet(str(tmp_path / "h.py"), ["lib", "*.yaml"], ["skip_*"])
    w.add([str(tmp_path / "lib" / "m.py")])
    assert w.roots() == [str(tmp_path)]
    assert w.relevant(str(tmp_path / "h.py")) and w.relevant(str(tmp_path / "lib" / "m.py"))
    assert w.relevant(str(tmp_path / "lib" / "new.txt"))           # an included folder
    assert w.relevant(str(tmp_path / "c.yaml")) and not w.relevant(str(tmp_path / "o.json"))
    assert not w.relevant(str(tmp_path / "skip_c.yaml"))
    mounts = tmp_path / "mountinfo"
    mounts.write_text(f"36 35 0:30 / / rw - overlay overlay rw\n"
                      f"40 36 0:40 / {tmp_path}/lib rw - nfs4 server:/x rw\n")
    assert reload_watch.needs_polling(str(tmp_path / "lib" / "m.py"), str(mounts))
    assert not reload_watch.needs_polling(str(tmp_path / "h.py"), str(mounts))


def test_the_handler_s_packages_stay_in_the_forkserver_after_the_first_reload(code):
    (code / "handler.py").write_text(HANDLER.replace("import helper", "import helper\nimport yaml"))
    s = Server(str(code / "handler.py"), code, WORKER_RELOAD="true")
    try:
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 1}
        save(code / "helper.py", "VALUE = 2\n")
        seen(s, 1)
        assert s.post("/runsync", {"input": {}}).json()["output"] == {"v": 2}
        text = s.log.read_text()
        assert "the forkserver keeps yaml" in text
        assert "yaml" in text.split("keeps yaml")[1].split("preloaded: ")[1].split("\n")[0]
    finally:
        s.close()


def test_without_watchfiles_reload_says_how_to_get_it(code, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    # This sitecustomize shadows the suite's loopback guard (tests/loopback_only): it
    # imports it too, and the guard's folder stays on the path.
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['watchfiles'] = None\n"
                                              "import loopback_guard\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ["PYTHONPATH"]])}
    r = subprocess.run([PYTHON, "-m", "worker", "serve", str(code / "handler.py"), "--reload"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pip install 'gpu-worker[reload]'" in r.stderr, r.stderr


def test_reload_in_load_balancing_mode(code):
    from tests.support import _free_port
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "WORKER_RELOAD": "true",
           "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": "1"}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    log = code / "lb.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([PYTHON, "-m", "worker", str(code / "handler.py"),
                                 "--load_balancer"], env=env, cwd=code, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert requests.post(url + "/runsync", json={"input": {}}, timeout=30).json()[
            "output"] == {"v": 1}
        save(code / "helper.py", "VALUE = 2\n")
        while log.read_text().count("changed; ") < 1:
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while True:        # no queue here: 429 while the new child starts, then the new code
            r = requests.post(url + "/runsync", json={"input": {}}, timeout=30)
            if r.status_code == 200:
                assert r.json()["output"] == {"v": 2}
                break
            assert r.status_code == 429 and time.monotonic() < deadline, r.text
            time.sleep(0.02)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()
