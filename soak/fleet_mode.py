"""A Redis endpoint: a `redis-server` with the append-only file and `appendfsync always`
(so a SIGKILL loses no acknowledged write), a gateway, and two workers (lease 2 s). The
contract (docs/fleet.md): at least once, at most WORKER_QUEUE_MAX_DELIVERIES runs; exactly
one final record per job, each counted once; a webhook at least once. Its faults: a
child or a forkserver SIGKILLed; worker B SIGKILLed and started again; worker A
SIGSTOPped past its lease and resumed; the gateway SIGKILLed and started again on its
port; Redis SIGKILLed and started again; a client that never reads the gateway's answers.
The client retries every request until answered, with the job's token as its
Idempotency-Key."""
from __future__ import annotations

import collections
import json
import sys
import threading
import time

from tests.fleet_support import REDIS, RedisServer
from worker.fleet.keys import Keys

from . import procs
from .http_client import Client, Receiver, final_of
from .local_mode import HANDLER
from .mode import Mode, NotMade

ENDPOINT = "soak"
LEASE_S = 2.0
MAX_DELIVERIES = 3


class FleetMode(Mode):
    name = "redis"
    fault_kinds = ("child", "forkserver", "worker_kill", "stall", "gateway_kill",
                   "redis_kill", "slow_reader")
    fsync = "always"                 # --redis-fsync: always, everysec, or off (no AOF)
    counted = "record"
    awaited = ("webhook",)           # the record is read at the end
    run_bound = MAX_DELIVERIES
    contract = (f"at least once, at most {MAX_DELIVERIES} runs; one final record, counted "
                "once; a webhook at least once")

    def start(self) -> None:
        if REDIS is None:
            raise SystemExit("no redis-server: `make redis` installs it")
        self.redis = RedisServer(self.folder / "redis",
                                 aof=None if self.fsync == "off" else self.fsync)
        self.keys = Keys(ENDPOINT)
        self.gw_port = procs.free_port()
        self.procs: dict = {}
        self.logs_: dict = {"redis": self.folder / "redis" / "redis.log"}
        self._restarts: list = []
        self._start("gateway")
        for name in ("A", "B"):
            self._start(name)
        self.receiver = Receiver(self.ledger)
        self.client = Client(f"http://127.0.0.1:{self.gw_port}", self.ledger,
                             self.receiver.url, retry=True, give_up_at=float("inf"))
        self.ends: collections.Counter = collections.Counter()
        self._listening = True
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        """Count each job's ends as the finish script publishes them (once per final
        record written). Ends published while Redis is away are missed: a lower bound, so
        a job counted twice was finished twice."""
        import redis
        while self._listening:
            try:
                sub = redis.Redis.from_url(self.redis.url).pubsub(ignore_subscribe_messages=True)
                sub.subscribe(self.keys.ended)
                while self._listening:
                    msg = sub.get_message(timeout=0.5)
                    if msg and msg["type"] == "message":
                        self.ends[msg["data"].decode()] += 1
            except (redis.RedisError, OSError):
                time.sleep(0.1)

    def _env(self) -> dict:
        return {**self.base_env, **self.env, "WORKER_QUEUE_URL": self.redis.url,
                "WORKER_ENDPOINT": ENDPOINT, "WORKER_WEBHOOK_ALLOW": "127.0.0.1",
                "WORKER_QUEUE_LEASE_S": str(LEASE_S),
                "WORKER_QUEUE_MAX_DELIVERIES": str(MAX_DELIVERIES)}

    def _start(self, name: str) -> None:
        self.logs_[name] = self.folder / f"{name}.log"
        if name == "gateway":
            args = [sys.executable, "-m", "worker", "gateway", "--port", str(self.gw_port)]
        else:
            args = [sys.executable, "-m", "worker", HANDLER]
        self.procs[name] = procs.start(args, self._env(), self.logs_[name], cwd=self.folder)
        if name == "gateway":
            procs.wait_http(f"http://127.0.0.1:{self.gw_port}/ping", self.procs[name],
                      self.logs_[name])

    def warm(self) -> None:
        import requests
        for i in range(6):
            r = requests.post(f"http://127.0.0.1:{self.gw_port}/runsync", json={"input": {
                "token": f"warm-{i}", "kind": "ok"}}, timeout=120)
            assert r.json()["status"] == "COMPLETED", r.text
        self.counts_before = self._counts()

    def _counts(self) -> int:
        return sum(int(v) for v in self.redis.client().hgetall(self.keys.counts).values())

    def send(self, job) -> None:
        self.client.send(job)

    def inject(self, kind: str) -> str:
        pids = [self.procs[name].pid for name in self.rng.sample(["A", "B"], 2)]
        if kind == "child":
            return self.kill_child(*pids)
        if kind == "forkserver":
            return self.kill_forkserver(*pids)
        if kind == "stall":
            return self.stall(self.procs["A"].pid, LEASE_S + self.rng.uniform(0.5, 1.5))
        if kind == "worker_kill":
            return self._kill_and_restart("B", self.rng.uniform(0.3, 2.0))
        if kind == "gateway_kill":
            return self._kill_and_restart("gateway", self.rng.uniform(0.3, 1.5))
        if kind == "redis_kill":
            if self.redis.proc.poll() is not None:
                raise NotMade("redis-server is down already")
            after = self.rng.uniform(0.5, 2.0)
            self.redis.kill()
            self._later(after, self.redis.start)
            return f"SIGKILL redis-server, started again {after:.1f} s later"
        if kind == "slow_reader":
            seconds = self.rng.uniform(2.0, 5.0)
            procs.slow_reader(self.gw_port, "/health", seconds)
            return f"a client pipelines 2,000 GET /health and reads nothing for {seconds:.1f} s"
        raise ValueError(kind)

    def _later(self, after: float, fn) -> None:
        t = threading.Timer(after, fn)
        t.start()
        self._restarts.append(t)

    def _kill_and_restart(self, name: str, after: float) -> str:
        proc = self.running(self.procs, name)
        proc.kill()
        proc.wait(30)
        self._later(after, lambda: self._start(name))
        return f"SIGKILL {name} ({proc.pid}), started again {after:.1f} s later"

    def restore(self) -> None:
        self.end_stalls()
        for t in self._restarts:
            t.join()
        if self.redis.proc.poll() is not None:
            self.redis.start()
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.exited(name, proc)
                self._start(name)

    def collect(self) -> list:
        """Each job's record, read from Redis; the counts against the records."""
        out = []
        r = self.redis.client()
        webhooks = {e.job.token: [f for f in e.finals if f[1] == "webhook"]
                    for e in self.ledger.jobs.values()}
        finals = 0
        for e in self.ledger.submitted():
            status, final = r.hmget(self.keys.job(e.ids[0]), "status", "final")
            status = status.decode() if status else None
            if final is None:
                self.ledger.note(e.job.token, f"its record at the end: status {status}")
                continue
            finals += 1
            body = json.loads(final)
            self.ledger.final(e.ids[0], "record", *final_of({**body, "status": status}))
            if not webhooks[e.job.token]:
                out.append((e.job.token, "a final record, and no webhook"))
        for e in self.ledger.submitted():
            if self.ends[e.ids[0]] > 1:
                out.append((e.job.token, f"finished {self.ends[e.ids[0]]} times: its end "
                                         "was published once per final record written"))
        counted = self._counts() - self.counts_before
        if counted != finals:
            out.append((None, f"the endpoint's counts grew by {counted} for {finals} final "
                              "records: a job was finished twice"))
        self.dead = r.xlen(self.keys.dead)
        return out

    def figures(self) -> list:
        ends = collections.Counter(self.ends[e.ids[0]] for e in self.ledger.submitted())
        return [f"ends published per job (missed while Redis was away): "
                + ", ".join(f"{k} {v}" for k, v in sorted(ends.items()))
                + f"; dead letters {self.dead}"]

    def steady(self) -> dict:
        return {"worker A": self.procs["A"].pid}

    def logs(self) -> dict:
        return dict(self.logs_)

    def close(self) -> None:
        self._listening = False
        for t in getattr(self, "_restarts", []):
            t.cancel()               # a restart still to come would outlive the run
        for proc in getattr(self, "procs", {}).values():
            procs.stop(proc)
        if getattr(self, "receiver", None):
            self.receiver.close()
        if getattr(self, "redis", None):
            self.redis.close()
