"""The local API: one worker process (`python -m worker serve`, two children) that holds
its jobs in memory. The contract: every job it accepted ends once, its webhook posted
once; a job runs once (WORKER_JOB_MAX_CRASHES=1). Its faults: a child or the forkserver
SIGKILLed, the worker SIGSTOPped and resumed, a client that never reads. The worker
itself is not killed here: its jobs live in its memory, and a restart forgets them by
design (the Redis mode is the one whose jobs outlive a worker)."""
from __future__ import annotations

import os
import sys

import requests

from . import procs
from .http_client import Client, Receiver, final_of
from .ledger import FINAL_STATES
from .mode import Mode

HANDLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handler.py")


class LocalMode(Mode):
    name = "local"
    fault_kinds = ("child", "forkserver", "stall", "slow_reader")
    counted = "webhook"
    run_bound = 1
    contract = "exactly once: one run, one final state, one webhook"

    def start(self) -> None:
        self.port = procs.free_port()
        self.log = self.folder / "worker.log"
        env = {**self.base_env, **self.env}
        self.proc = procs.start([sys.executable, "-m", "worker", "serve", HANDLER,
                                   "--rp_api_port", str(self.port)], env, self.log,
                                  cwd=self.folder)
        self.url = f"http://127.0.0.1:{self.port}"
        procs.wait_http(self.url + "/health", self.proc, self.log)
        self.receiver = Receiver(self.ledger)
        self.client = Client(self.url, self.ledger, self.receiver.url, retry=False,
                             give_up_at=float("inf"))

    def warm(self) -> None:
        for i in range(5):
            r = requests.post(self.url + "/runsync", json={"input": {
                "token": f"warm-{i}", "kind": "ok"}}, timeout=60)
            assert r.json()["status"] == "COMPLETED", r.text

    def send(self, job) -> None:
        self.client.send(job)

    def inject(self, kind: str) -> str:
        pid = self.proc.pid
        if kind == "child":
            return self.kill_child(pid)
        if kind == "forkserver":
            return self.kill_forkserver(pid)
        if kind == "stall":
            return self.stall(pid, self.rng.uniform(1.0, 3.0))
        if kind == "slow_reader":
            seconds = self.rng.uniform(2.0, 5.0)
            procs.slow_reader(self.port, "/health", seconds)
            return f"a client pipelines 2,000 GET /health and reads nothing for {seconds:.1f} s"
        raise ValueError(kind)

    def restore(self) -> None:
        self.end_stalls()

    def collect(self) -> list:
        """A job with no webhook: is it final in /status (reported, not posted) or not?"""
        for e in self.ledger.pending():
            status = self.client.status(e.ids[0]) or {}
            self.ledger.note(e.job.token, f"/status at the end: {str(status)[:300]}")
            if status.get("status") in FINAL_STATES:
                self.ledger.final(e.ids[0], "status", *final_of(status))
        return []

    def steady(self) -> dict:
        return {"worker": self.proc.pid}

    def logs(self) -> dict:
        return {"worker": self.log}

    def close(self) -> None:
        procs.stop(getattr(self, "proc", None))
        if getattr(self, "receiver", None):
            self.receiver.close()
