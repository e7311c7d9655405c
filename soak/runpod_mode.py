"""The stand-in RunPod queue (tests/fake_runpod.py) with two workers taking from it. The
contract, as on RunPod: every job a worker took is reported once (job-done), and runs
once; a job the platform stops is not reported (the platform ended it), unless its
result was already on its way. Its faults: a child or the forkserver SIGKILLed; a worker
SIGSTOPped and resumed, or stopped with SIGTERM (as the platform scales down: it must
finish and report what it took) and started again; the queue away (connections
refused), answering 500s and cutting connections, or slow. A worker SIGKILLed on RunPod
leaves its jobs to the platform's own retry, which the stand-in does not model."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from tests.fake_runpod import FakeRunPod

from . import procs
from .local_mode import HANDLER
from .ledger import GRACE_S
from .mode import Mode, NotMade
from .plan import expected_output


def final_of_done_post(body: dict) -> tuple:
    """(state, output or error) of a job-done body: RunPod's has no state of its own."""
    if "error" not in body:
        return "COMPLETED", body.get("output")
    try:
        kind = json.loads(body["error"]).get("error_type", "")
    except (ValueError, AttributeError):
        kind = ""
    return ("TIMED_OUT" if kind == "TimedOut" else "FAILED"), body["error"]


def _in_order(sent: list, expected: list) -> bool:
    """`sent` is `expected` with some left out, in its order."""
    rest = iter(expected)
    return all(any(c == e for e in rest) for c in sent)


class RunPodMode(Mode):
    name = "runpod"
    fault_kinds = ("child", "forkserver", "stall", "worker_restart", "queue_away",
                   "queue_errors", "queue_slow")
    counted = "queue"
    awaited = ("queue", "platform")
    run_bound = 1
    contract = "exactly once: one run, one job-done post (none after a platform stop)"

    def start(self) -> None:
        self.queue = FakeRunPod(long_poll=0.3).__enter__()
        self.queue.fault = self._queue_fault
        self._faulty = {"until": 0.0, "what": None}
        self.workers = {}
        self.logs_ = {}
        self._restarts: list = []
        self._restarting: set = set()
        self._away = False
        self.chunks_let_go = 0
        for name in ("w1", "w2"):
            self._start_worker(name)
        self._fed: dict = {}

    def _start_worker(self, name: str) -> None:
        env = {**self.base_env, **self.queue.env(name), **self.env}
        self.logs_[name] = self.folder / f"{name}.log"
        self.workers[name] = procs.start([sys.executable, "-m", "worker", HANDLER], env,
                                           self.logs_[name], cwd=self.folder)

    def _queue_fault(self, kind: str, n: int):
        if time.monotonic() > self._faulty["until"]:
            return None
        what = self._faulty["what"]
        if what == "errors":
            return self.rng.choices([None, "500", "drop"], [6, 3, 1])[0]
        return what

    def warm(self) -> None:
        self.queue.add_jobs([{"id": f"warm-{i}", "input": {"token": f"warm-{i}",
                                                           "kind": "ok"}} for i in range(6)])
        self.queue.wait_final([f"warm-{i}" for i in range(6)], timeout=120)

    def send(self, job) -> None:
        body = {"id": job.token, **job.body()}
        self.ledger.sent(job.token)
        self.queue.add_jobs([body])
        self.ledger.accepted(job.token, job.token)
        if job.cancel_after is None:
            return
        time.sleep(job.cancel_after)
        self.ledger.cancel_asked(job.token)
        q = self.queue
        with q.lock:
            if q.finals.get(job.token):
                self.ledger.note(job.token, "cancel: it had ended already")
                return
            queued = [j for j in q.queue if isinstance(j, dict) and j.get("id") == job.token]
            for j in queued:
                q.queue.remove(j)
        if queued:
            self.ledger.final(job.token, "platform", "CANCELLED", "taken out of the queue")
        else:
            q.stop_job(job.token)
            self.ledger.final(job.token, "platform", "CANCELLED", "stop sent to its worker")

    def inject(self, kind: str) -> str:
        order = self.rng.sample(["w1", "w2"], 2)
        pids = [self.workers[name].pid for name in order]
        if kind == "child":
            return self.kill_child(*pids)
        if kind == "forkserver":
            return self.kill_forkserver(*pids)
        if kind == "stall":
            return self.stall(self.workers["w1"].pid, self.rng.uniform(1.0, 3.0))
        if kind == "worker_restart":
            return self._restart("w2", self.rng.uniform(0.2, 1.5))
        if kind.startswith("queue_"):
            seconds = self.rng.uniform(1.0, 3.0)
            if kind == "queue_away":
                if self._away:
                    raise NotMade("the queue is away already")
                self._away = True
                self.queue.pause(cut=True)
                t = threading.Timer(seconds, self._back)
                t.start()
                self._restarts.append(t)
                return f"the queue cuts its connections and refuses new ones for {seconds:.1f} s"
            self._faulty.update(until=time.monotonic() + seconds,
                                what="errors" if kind == "queue_errors" else "slow")
            return f"{kind} for {seconds:.1f} s"
        raise ValueError(kind)

    def _back(self) -> None:
        self.queue.resume()
        self._away = False

    def _restart(self, name: str, after: float) -> str:
        deadline = time.monotonic() + 8.0      # a restart still on its way: wait for it
        while name in self._restarting:
            if time.monotonic() > deadline:
                raise NotMade(f"{name} is still restarting")
            time.sleep(0.05)
        proc = self.running(self.workers, name)
        self._restarting.add(name)
        with self.ledger.lock:
            self.ledger.stopped.append((self.ledger.now(), name))
        proc.send_signal(signal.SIGTERM)

        def again():
            try:      # its grace, its results' flush time, and a margin
                code = proc.wait(GRACE_S + 15 + 10)
                if code != 0:
                    self.problems.append((None, f"{name} exited with {code} after SIGTERM"))
            except subprocess.TimeoutExpired:
                self.problems.append((None, f"{name} did not exit within "
                                            f"{GRACE_S + 25} s of SIGTERM"))
                proc.kill()
                proc.wait()
            time.sleep(after)
            self._start_worker(name)
            self._restarting.discard(name)
        t = threading.Thread(target=again, daemon=True)
        t.start()
        self._restarts.append(t)
        return f"SIGTERM {name} ({proc.pid}), started again {after:.1f} s after it exits"

    def restore(self) -> None:
        self.end_stalls()
        for t in self._restarts:
            t.join()
        self._faulty["until"] = 0.0
        for name, proc in self.workers.items():
            if proc.poll() is not None:
                self.exited(name, proc)
                self._start_worker(name)

    def poll(self) -> None:
        q = self.queue
        with q.lock:
            items = [(i, list(bodies), list(q.answered[i]), q.done_at.get(i))
                     for i, bodies in q.finals.items()]
        for job_id, bodies, answered, done_at in items:
            if job_id.startswith("warm-"):
                continue
            fed = self._fed.get(job_id, 0)
            for body, heard in zip(bodies[fed:], answered[fed:]):
                at = None if done_at is None else done_at - self.ledger.t0
                # a post whose answer was cut: the worker never heard of it, and retries
                self.ledger.final(job_id, "queue" if heard else "queue?", *final_of_done_post(body),
                                  at=at)
                done_at = None           # a second post: when it is seen
            self._fed[job_id] = len(bodies)

    def collect(self) -> list:
        self.poll()
        q = self.queue
        out = [(None, f"a {op} post for {job_id} that is not one: {what}")
               for op, job_id, what in q.malformed]
        for e in self.ledger.submitted():
            finals = [f for f in e.finals if f[1] == "queue"]
            if not finals or finals[0][2] != "COMPLETED":
                continue
            with q.lock:
                streamed = [b.get("output") for b in q.streams.get(e.job.token, [])]
            sent = [c for n, c in enumerate(streamed) if n == 0 or c != streamed[n - 1]]
            expected = expected_output(e.job.kind, e.job.token)    # (a post sent again
            if sent == expected:                                   # is one)
                continue
            # a chunk may be missing only where its posts failed (chunks are retried, then
            # let go, as runpod-python does; the final output holds them all): in order,
            # none foreign, and the worker said so
            if _in_order(sent, expected) and self._stream_failed(e.job.token):
                self.chunks_let_go += len(expected) - len(sent)
            else:
                out.append((e.job.token, f"streamed {sent}, not its chunks"))
        for e in self.ledger.pending():
            with q.lock:
                queued = any(isinstance(j, dict) and j.get("id") == e.job.token
                             for j in q.queue)
                taken = [n for n, (_, ids) in enumerate(q.takes) if e.job.token in ids]
            self.ledger.note(e.job.token, f"at the end: still queued {queued}, in take(s) "
                                          f"{taken} by {q.taken_by.get(e.job.token)}")
        return out

    def _stream_failed(self, token: str) -> bool:
        """A worker's log says a stream post of this job failed."""
        mark = f"| {token} | stream post failed"
        for path in self.logs_.values():
            try:
                if mark in open(path, errors="replace").read():
                    return True
            except FileNotFoundError:
                pass
        return False

    def figures(self) -> list:
        return [f"stream chunks let go after their posts failed: {self.chunks_let_go}"]

    def steady(self) -> dict:
        return {"w1": self.workers["w1"].pid}

    def logs(self) -> dict:
        return dict(self.logs_)

    def close(self) -> None:
        for t in getattr(self, "_restarts", []):
            if isinstance(t, threading.Timer):
                t.cancel()
        for proc in getattr(self, "workers", {}).values():
            procs.stop(proc)
        if getattr(self, "queue", None):
            self.queue.__exit__(None, None, None)
