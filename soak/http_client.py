"""The soak's clients of an HTTP endpoint (the local API, the gateway): each job sent by
/run or /runsync with a webhook to the soak's receiver, cancelled when the plan says;
with `retry` (the gateway) every request is retried until answered, with the job's token
as its Idempotency-Key, as a client that lost an answer does."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from .ledger import FINAL_STATES, Ledger
from .plan import PlannedJob


def final_of(body: dict) -> tuple:
    """(state, its error, else its output) of a RunPod-style status body (a generator that
    failed has both: the chunks so far, and the error)."""
    return body.get("status"), body["error"] if "error" in body else body.get("output")


class Receiver:
    """Webhooks on loopback: each post's body is a final report of its job."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        receiver = self

        class Hook(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                try:
                    body = json.loads(raw)
                    state, detail = final_of(body)
                    receiver.ledger.final(body["id"], "webhook", state, detail)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    with receiver.ledger.lock:
                        receiver.ledger.malformed.append(f"webhook {exc!r}: {raw[:200]!r}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Client:
    def __init__(self, base: str, ledger: Ledger, hook_url: str, retry: bool,
                 give_up_at: float):
        self.base, self.ledger, self.hook_url = base, ledger, hook_url
        self.retry, self.give_up_at = retry, give_up_at
        self._local = threading.local()

    def _session(self):
        """A kept connection where requests are retried; else a fresh one per request: a
        kept one the server closes as the client reuses it fails a POST the client cannot
        safely send again (the local API has no Idempotency-Key)."""
        if not self.retry:
            return requests
        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
        return self._local.s

    def _post(self, token: str, path: str, body=None, headers=None):
        """The answer, or None once the client gives up (it notes each failed try)."""
        while True:
            try:
                r = self._session().post(self.base + path, json=body, headers=headers,
                                         timeout=120)
                if not (self.retry and r.status_code >= 500):
                    return r
                why = f"{r.status_code} {r.text[:120]}"
            except requests.RequestException as exc:
                why = type(exc).__name__
            self.ledger.note(token, f"{path}: {why}")
            if not self.retry or self.ledger.now() > self.give_up_at:
                self.ledger.refuse(token, why)
                return None
            time.sleep(0.2)

    def send(self, job: PlannedJob) -> None:
        headers = {"Idempotency-Key": job.token} if self.retry else None
        self.ledger.sent(job.token)
        r = self._post(job.token, f"/{job.via}", job.body(self.hook_url), headers)
        if r is None:
            return
        if r.status_code != 200:
            self.ledger.refuse(job.token, f"{r.status_code} {r.text[:200]}")
            return
        answer = r.json()
        self.ledger.accepted(job.token, answer["id"])
        state, detail = final_of(answer)
        if job.via == "runsync" and state in FINAL_STATES:
            self.ledger.final(answer["id"], "runsync", state, detail)
        if job.cancel_after is not None:
            time.sleep(job.cancel_after)
            self.ledger.cancel_asked(job.token)
            r = self._post(job.token, f"/cancel/{answer['id']}")
            if r is not None:
                self.ledger.note(job.token, f"cancel answered {r.status_code} {r.text[:120]}")

    def status(self, job_id: str) -> dict | None:
        try:
            return self._session().get(f"{self.base}/status/{job_id}", timeout=30).json()
        except (requests.RequestException, ValueError):
            return None
