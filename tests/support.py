"""Helpers for tests that run real supervisors over real child processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import requests

from worker.targets import ScriptTarget
from worker.config import Settings
from worker.jobs import JobResult
from worker.parent.supervisor import JobListener, Supervisor

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = Path(__file__).resolve().parent / "handlers"
EXAMPLES = ROOT / "examples"
PYTHON = sys.executable

# Quick clocks for tests; each test overrides what it exercises.
FAST = dict(stop_grace=1.0, setup_timeout=30.0, heartbeat_interval=0.2, heartbeat_timeout=30.0)


class Collector(JobListener):
    """Records every event per job, in arrival order."""

    def __init__(self):
        self.events: list[tuple] = []
        self.results: dict[str, JobResult] = {}
        self.counts: dict[str, int] = {}
        self._cond = threading.Condition()

    def on_start(self, job_id):
        self.events.append(("start", job_id))

    def on_progress(self, job_id, value):
        self.events.append(("progress", job_id, value))

    def on_chunk(self, job_id, value):
        self.events.append(("chunk", job_id, value))

    def on_result(self, result):
        with self._cond:
            self.events.append(("result", result.job_id, result.state.value))
            self.counts[result.job_id] = self.counts.get(result.job_id, 0) + 1
            self.results[result.job_id] = result
            self._cond.notify_all()

    def wait(self, job_ids, timeout=60.0) -> dict:
        with self._cond:
            ok = self._cond.wait_for(lambda: all(j in self.results for j in job_ids), timeout)
        assert ok, f"no result for {[j for j in job_ids if j not in self.results]}"
        return {j: self.results[j] for j in job_ids}

    def wait_for(self, predicate, timeout=60.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self), timeout), "timed out"

    def of(self, kind, job_id):
        return [e[2] for e in self.events if e[0] == kind and e[1] == job_id]


class Harness:
    def __init__(self, handler: str, argv=(), sink=None, probe=None, **settings):
        path = handler if os.path.isabs(handler) else str(HANDLERS / handler)
        self.settings = Settings(**{**FAST, **settings})
        kwargs = {"output_sink": sink} if sink else {}
        if probe is not None:
            kwargs["probe"] = probe
        self.sup = Supervisor(self.settings, ScriptTarget(path, list(argv)), **kwargs).start()
        self.listener = Collector()
        self._n = 0

    def submit(self, inp=None, job_id=None, **extra) -> str:
        self._n += 1
        job_id = job_id or f"job-{self._n}"
        self.sup.submit({"id": job_id, "input": inp if inp is not None else {}, **extra},
                        self.listener)
        return job_id

    def run(self, inp=None, timeout=60.0, **extra) -> JobResult:
        job_id = self.submit(inp, **extra)
        return self.listener.wait([job_id], timeout)[job_id]

    def close(self):
        if self.sup.join(0):      # already closed
            return
        self.sup.stop()
        assert self.sup.join(30), "supervisor did not stop"


def harness_fixture():
    made = []

    def make(handler, **kw) -> Harness:
        h = Harness(handler, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer runs (zombies count as gone)."""
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return proc.status() == psutil.STATUS_ZOMBIE


def run_cli(args, cwd=None, timeout=120, env=None, input=None):
    """Run a command line (python ...) and return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input)


def oneshot_body(stdout: str):
    """The JSON body a one-shot run printed after its '--- job ... ---' line."""
    import json
    head = stdout.index("\n", stdout.index("--- job ")) + 1
    return json.JSONDecoder().raw_decode(stdout[head:])[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, handler: str, tmp_path, args=(), address="127.0.0.1", **env):
        self.port = _free_port()
        self.url = f"http://{address}:{self.port}"
        self.log = tmp_path / f"api-{self.port}.log"
        full_env = {**os.environ, "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": "1",
                    **{k: str(v) for k, v in env.items()}}
        full_env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "worker", "serve", str(HANDLERS / handler),
                 "--rp_api_port", str(self.port), *args], env=full_env, stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                worker = requests.get(f"{self.url}/health", timeout=1).json()["worker"]
                if worker["child"] or worker["state"] != "running":
                    return
            except (requests.RequestException, KeyError, TypeError):
                pass
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    def post(self, path, body=None, **kw):
        return requests.post(f"{self.url}{path}", json=body, timeout=60, **kw)

    def get(self, path, timeout=60, **kw):
        return requests.get(f"{self.url}{path}", timeout=timeout, **kw)

    def health_until(self, predicate, timeout=60):
        """/health's worker once `predicate` holds for it (a child that fails setup is
        first seen starting: wait for the event, not a sleep)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker = self.get("/health").json()["worker"]
            if predicate(worker):
                return worker
            time.sleep(0.05)
        raise AssertionError(f"/health never matched: {worker}")

    def until(self, job_id, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get(f"/status/{job_id}").json()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"status never matched: {status}")

    def close(self):
        self.proc.terminate()
        try:
            assert self.proc.wait(30) == 0, self.log.read_text()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


class Worker:
    """`python -m worker <handler>` against a stand-in queue, with its log in a file."""

    def __init__(self, queue, handler: str, tmp_path, entry: str = "module", args=(), **env):
        self.log = tmp_path / "worker.log"
        full_env = {**os.environ, **queue.env(), "WORKER_STOP_GRACE": "1",
                    **{k: str(v) for k, v in env.items()}}
        head = [PYTHON] if entry == "script" else [PYTHON, "-m", "worker"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([*head, str(HANDLERS / handler), *args],
                                         env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def text(self) -> str:
        return self.log.read_text()


class Hook:
    """A webhook receiver on loopback: keeps each post's body (`posts`) and headers
    (`headers`); with `fail_first`, the first delivery gets a 500 (to be retried)."""

    def __init__(self, fail_first: bool = False):
        self.posts, self.headers = [], []
        self.cond = threading.Condition()
        hook = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.cond:
                    hook.posts.append(body)
                    hook.headers.append(dict(self.headers))
                    hook.cond.notify_all()
                    fail = fail_first and len(hook.posts) == 1
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30.0) -> list:
        """The first n posts' (headers, body), once they came."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.posts) >= n, timeout), self.posts
            return list(zip(self.headers, self.posts))[:n]
