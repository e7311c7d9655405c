"""Real Redis servers, gateways and queue workers for the fleet tests (and bench_fleet).

Each server is a `redis-server` process of its own on a free loopback port, in a folder
of the test's. Without the binary the tests are skipped with a reason that says how to
get it (`make redis`; CI installs it)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.support import HANDLERS, PYTHON, Server, _free_port

REDIS = shutil.which("redis-server")
NO_REDIS = ("FLEET TESTS SKIPPED: no redis-server on this machine (`make redis` installs "
            "Debian's redis-server; .ci/run does it for CI)")


class RedisServer:
    def __init__(self, folder: Path, aof: str | None = None, password: str | None = None,
                 policy: str = "noeviction"):
        """aof: None (no persistence), 'everysec' or 'always'."""
        self.folder, self.aof, self.password = Path(folder), aof, password
        self.policy = policy
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.folder), "--save", "", "--daemonize", "no",
                "--maxmemory-policy", self.policy]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", self.aof]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=open(self.folder / "redis.log", "a"),
                                     stderr=subprocess.STDOUT)
        self.client().ping()        # waits: retries until it answers

    def client(self, retry_s: float = 10.0):
        import redis
        r = redis.Redis.from_url(self.url, password=self.password)
        deadline = time.monotonic() + retry_s
        while True:
            try:
                r.ping()
                return r
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def shutdown(self) -> None:
        """A clean stop (the AOF is written)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def fleet_env(server: RedisServer, endpoint: str, **extra) -> dict:
    env = {**os.environ, "WORKER_QUEUE_URL": server.url, "WORKER_ENDPOINT": endpoint,
           "WORKER_HEALTH_FILE": "",
           "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": "1",
           **{k: str(v) for k, v in extra.items()}}
    for name in ("RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_REALTIME_PORT", "PORT_HEALTH"):
        env.pop(name, None)
    return env


class Proc:
    """A worker or a gateway process, its output in a file."""

    def __init__(self, args: list, env: dict, log: Path, cwd: Path | None = None):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=cwd)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def start_worker(server, endpoint, folder: Path, handler="fleet_jobs.py", name="w",
                 **env) -> Proc:
    """A queue worker whose folder (its runs.log) is `folder`."""
    return Proc([PYTHON, "-m", "worker", str(HANDLERS / handler)],
                fleet_env(server, endpoint, **env), folder / f"{name}.log", cwd=folder)


def runs(folder: Path) -> dict:
    """Job id -> how many runs began, from the handler's runs.log."""
    out: dict = {}
    path = Path(folder) / "runs.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        job_id = line.split()[0]
        out[job_id] = out.get(job_id, 0) + 1
    return out


def finals(server: RedisServer, endpoint: str) -> int:
    """Final records written for the endpoint (each finalize counts once)."""
    from worker.fleet.keys import Keys
    counts = server.client().hgetall(Keys(endpoint).counts)
    return sum(int(v) for v in counts.values())


class Gateway(Proc):
    def __init__(self, server, endpoint, folder: Path, name="gw", **env):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([PYTHON, "-m", "worker", "gateway", "--port", str(self.port)],
                         fleet_env(server, endpoint, **env), folder / f"{name}.log")
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(self.url + "/ping", timeout=2)
                return
            except requests.ConnectionError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
                time.sleep(0.05)

    def post(self, path, body=None, **kw):
        return requests.post(self.url + path, json=body, timeout=kw.pop("timeout", 120), **kw)

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def until(self, job_id, predicate, timeout=60):
        return Server.until(self, job_id, predicate, timeout)      # the same /status poll
