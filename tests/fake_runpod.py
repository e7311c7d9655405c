"""A stand-in RunPod queue: a real HTTP server on loopback that speaks the worker protocol
(job-take, job-take-batch, job-done, job-stream, ping, job-stop), serves a workload,
records every request, and injects faults on demand. Used by tests and by bench/.

    with FakeRunPod() as q:
        q.add_jobs([{"id": "a", "input": {}}])
        env = q.env()          # RUNPOD_* variables pointing at it
        ...
        q.wait_final(["a"])
"""
from __future__ import annotations

import collections
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlparse

ENDPOINT = "ep-test"


class Batch(list):
    """One take answer given as is (a queue item): an array of its elements, each a job
    (sent as JSON) or bytes (sent raw, possibly broken)."""

    def encode(self) -> bytes:
        return b"[" + b",".join(e if isinstance(e, bytes) else json.dumps(e).encode()
                                for e in self) + b"]"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass     # clients that hang up (a worker shutting down) are not errors here


class FakeRunPod:
    def __init__(self, long_poll: float = 0.5, api_key: str = "test-key",
                 fault: Callable[[str, int], str | None] | None = None):
        self.long_poll = long_poll
        self.api_key = api_key
        self.fault = fault               # (kind, n-th request of that kind) -> None|"500"|"drop"|"slow"
        self.job_fault: Callable[[str, str], str | None] | None = None   # (kind, job id) -> same, or "hang"
        self.stopped = threading.Event()
        self.done_at: dict = {}          # job id -> when its final body arrived
        self.lock = threading.Condition()
        self.queue: collections.deque = collections.deque()
        self.stop_ids: list = []
        self.taken_by: dict = {}         # job id -> the worker whose take it went out in
        self._open: set = set()          # connections being served (pause(cut=True))
        self.takes: list = []            # (query, [job ids])
        self.finals: dict = collections.defaultdict(list)     # job id -> [body]
        self.answered: dict = collections.defaultdict(list)   # job id -> [its 200 was sent]
        self.malformed: list = []        # (op, job id, what) of posts that were not JSON objects
        self.final_query: dict = {}
        self.progress: dict = collections.defaultdict(list)
        self.streams: dict = collections.defaultdict(list)
        self.order: dict = collections.defaultdict(list)      # job id -> ["progress", "stream", "done"]
        self.pings: list = []
        self.requests: list = []         # (method, op, query, headers) of every request
        self.counts: collections.Counter = collections.Counter()
        self.bad_auth = 0
        self.first_done_at: float | None = None
        self.last_done_at: float | None = None
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/v2/{ENDPOINT}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- control -------------------------------------------------------------------------

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()               # a post held by a "hang" fault ends
        self.server.shutdown()
        self.server.server_close()

    def pause(self, cut: bool = False) -> None:
        """Stop listening: connections are refused until resume(); with `cut`, the open
        ones are cut too (as when the platform's front goes away), not only new ones."""
        self.server.shutdown()
        self.server.server_close()
        if cut:
            with self.lock:
                open_now = list(self._open)
            for conn in open_now:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def resume(self) -> None:
        self.server = _Server(("127.0.0.1", self.port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def env(self, worker_id: str = "w1") -> dict:
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/job-take/$ID?gpu=SIM",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/job-done/$RUNPOD_POD_ID/$ID?gpu=SIM",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=SIM",
            "RUNPOD_WEBHOOK_PING": f"{self.base}/ping/$RUNPOD_POD_ID",
            "RUNPOD_AI_API_KEY": self.api_key,
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_PING_INTERVAL": "200",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",   # for runpod-python in bench/
        }

    def add_jobs(self, jobs) -> None:
        with self.lock:
            self.queue.extend(jobs)
            self.lock.notify_all()

    def fail_results(self, job_id: str, times: int) -> dict:
        """Answer 500 to this job's first `times` result posts; the dict counts them."""
        failed = {"n": 0}

        def fault(kind, failing_id):
            if kind == "done" and failing_id == job_id and failed["n"] < times:
                failed["n"] += 1
                return "500"
            return None
        self.job_fault = fault
        return failed

    def stop_job(self, job_id: str) -> None:
        with self.lock:
            self.stop_ids.append(job_id)
            self.lock.notify_all()

    def wait_final(self, job_ids, timeout: float = 60.0) -> dict:
        with self.lock:
            ok = self.lock.wait_for(lambda: all(self.finals.get(j) for j in job_ids), timeout)
            missing = [j for j in job_ids if not self.finals.get(j)]
        assert ok, f"no final result for {missing[:10]} ({len(missing)} missing)"
        return {j: self.finals[j][0] for j in job_ids}

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: predicate(self), timeout)

    # --- HTTP ----------------------------------------------------------------------------

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True    # else headers and body wait on delayed ACKs

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with fake.lock:
                    fake._open.add(self.connection)

            def finish(self):
                with fake.lock:
                    fake._open.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass          # a connection pause(cut=True) cut

            def _send(self, code: int, body=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def _fault(self, kind: str) -> bool:
                with fake.lock:
                    fake.counts[kind] += 1
                    n = fake.counts[kind]
                    fake.lock.notify_all()
                what = fake.fault(kind, n) if fake.fault else None
                if what == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return True
                if what == "500":
                    self._send(500, {"error": "injected"})
                    return True
                if what == "slow":
                    time.sleep(1.0)
                return False

            def _route(self):
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                # /v2/<endpoint>/<op>/<worker>[/<job>]
                op, query = parts[2] if len(parts) > 2 else "", parse_qs(url.query)
                with fake.lock:
                    fake.requests.append((self.command, op, query, dict(self.headers)))
                return op, parts[3:], query

            def do_GET(self):
                op, rest, query = self._route()
                if self.headers.get("Authorization") != fake.api_key:
                    fake.bad_auth += 1
                if op in ("job-take", "job-take-batch"):
                    if self._fault("take"):
                        return
                    n = int(query.get("batch_size", ["1"])[0]) if op == "job-take-batch" else 1
                    deadline = time.monotonic() + fake.long_poll
                    with fake.lock:
                        fake.lock.wait_for(lambda: fake.queue, max(0, deadline - time.monotonic()))
                        jobs = []     # a raw answer (bytes, Batch) goes alone
                        while fake.queue and len(jobs) < n and not (
                                jobs and isinstance(fake.queue[0], (bytes, Batch))):
                            jobs.append(fake.queue.popleft())
                            if isinstance(jobs[0], (bytes, Batch)):
                                break
                    try:
                        if not jobs:
                            self._send(204)
                        elif isinstance(jobs[0], (bytes, Batch)):   # a raw answer
                            raw = jobs[0].encode() if isinstance(jobs[0], Batch) else jobs[0]
                            self.send_response(200)
                            self.send_header("Content-Type", "application/json")
                            self.send_header("Content-Length", str(len(raw)))
                            self.end_headers()
                            self.wfile.write(raw)
                        else:
                            self._send(200, jobs if op == "job-take-batch" else jobs[0])
                    except OSError:
                        # the answer could not be written (the connection is gone): as a
                        # platform would, the jobs go back to the front of the queue
                        with fake.lock:
                            fake.queue.extendleft(reversed(jobs))
                            fake.lock.notify_all()
                        raise
                    else:        # a take is recorded once its answer is on the wire
                        with fake.lock:
                            ids = [j.get("id") for j in (
                                jobs[0] if jobs and isinstance(jobs[0], Batch) else jobs)
                                if isinstance(j, dict)]
                            fake.takes.append((query, ids))
                            fake.taken_by.update((i, rest[0] if rest else "") for i in ids
                                                 if isinstance(i, str))
                            fake.lock.notify_all()
                    return
                if op == "job-stop":
                    # as the platform does: a stop goes to the worker that took the job
                    me = rest[0] if rest else ""

                    def mine():
                        return [i for i in fake.stop_ids if fake.taken_by.get(i, me) == me]
                    deadline = time.monotonic() + fake.long_poll
                    with fake.lock:
                        fake.lock.wait_for(mine, max(0, deadline - time.monotonic()))
                        ids = mine()
                        fake.stop_ids = [i for i in fake.stop_ids if i not in ids]
                    return self._send(200, {"jobsToStop": ids}) if ids else self._send(204)
                if op == "ping":
                    with fake.lock:
                        fake.pings.append(query)
                        fake.lock.notify_all()
                    return self._send(200, {})
                self._send(404, {"error": "no such route"})

            def do_POST(self):
                op, rest, query = self._route()
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                kind = {"job-done": "done", "job-stream": "stream"}.get(op)
                if kind is None:
                    return self._send(404, {"error": "no such route"})
                if self._fault(kind):
                    return
                job_id = rest[1]
                what = fake.job_fault(kind, job_id) if fake.job_fault else None
                if what == "500":
                    return self._send(500, {"error": "injected for this job"})
                if what == "hang":          # takes the post, never answers (until it ends)
                    fake.stopped.wait(120)
                    return
                try:
                    body = json.loads(raw)
                    if not isinstance(body, dict):
                        raise ValueError("not an object")
                except ValueError as exc:     # the worker sent something that is not a post
                    with fake.lock:
                        fake.malformed.append((op, job_id, f"{exc}: {raw[:200]!r}"))
                    return self._send(400, {"error": "not a JSON object"})
                with fake.lock:
                    if kind == "stream":
                        fake.streams[job_id].append(body)
                        fake.order[job_id].append("stream")
                    elif body.get("status") == "IN_PROGRESS":
                        fake.progress[job_id].append(body)
                        fake.order[job_id].append("progress")
                    else:
                        fake.finals[job_id].append(body)
                        answered = fake.answered[job_id]
                        mark = len(answered)
                        answered.append(True)
                        fake.final_query[job_id] = query
                        fake.order[job_id].append("done")
                        now = time.monotonic()
                        fake.done_at.setdefault(job_id, now)
                        fake.first_done_at = fake.first_done_at or now
                        fake.last_done_at = now
                    fake.lock.notify_all()
                try:
                    self._send(200, {})
                except OSError:     # recorded, but the worker never hears so: it retries
                    if kind == "done" and body.get("status") != "IN_PROGRESS":
                        with fake.lock:
                            answered[mark] = False
                    raise

        return Handler
