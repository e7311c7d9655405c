"""No secret is printed or returned (issue 36): everything the worker and the gateway
write — banners, DEBUG logs, webhook failures, /health, /metrics — in each mode, searched
for every secret they were given: WORKER_API_TOKEN, RUNPOD_AI_API_KEY, the queue's
password (in the URL's user info, and in its query, which the client library accepts),
and a client's credential in a webhook URL's query."""
import os
import subprocess
import uuid

import pytest
import requests
from hypothesis import example, given, settings, strategies as st

from tests.fake_runpod import FakeRunPod
from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, start_worker
from tests.support import HANDLERS, PYTHON, Worker
from worker import redaction
from tests.test_webhooks import _log_until


def _secret(name):
    return f"{name}-{uuid.uuid4().hex}"


def _clean(text, secrets):
    return [s for s in secrets if s in text]


def test_the_local_api_prints_no_secret(server):
    token, key, client = _secret("token"), _secret("key"), _secret("client")
    s = server("edges.py", WORKER_API_TOKEN=token, RUNPOD_AI_API_KEY=key,
               WORKER_LOG_LEVEL="DEBUG")
    auth = {"Authorization": f"Bearer {token}"}
    # A receiver that refuses connections: its URL, credential included, is logged.
    s.post("/run", {"input": {"do": "echo"}, "webhook": f"http://127.0.0.1:9/h?token={client}"
                    f"&x=1#secret={client}"}, headers=auth)
    answers = [s.get("/health").text, s.get("/metrics", headers=auth).text,
               s.get("/openapi.json", headers=auth).text]
    log = _log_until(s, "webhook http://127.0.0.1:9/h?")
    assert "webhook http://127.0.0.1:9/h?token=***" in log, log[-2000:]
    assert "Bearer $WORKER_API_TOKEN" in log
    for text in (log, *answers):
        assert _clean(text, (token, key, client)) == [], text[-2000:]


def test_the_runpod_worker_prints_no_secret(tmp_path):
    token, key = _secret("token"), _secret("key")
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "edges.py", tmp_path, WORKER_API_TOKEN=token, WORKER_LOG_LEVEL="DEBUG")
        try:
            q.add_jobs([{"id": "a", "input": {"do": "echo"}}])
            q.wait_final(["a"], 60)
        finally:
            assert w.stop() == 0, w.text()
    assert _clean(w.text(), (token, key)) == [], w.text()


@pytest.mark.skipif(REDIS is None, reason=NO_REDIS)
@pytest.mark.parametrize("where", ["user info", "query"])
def test_the_fleet_prints_no_queue_password(tmp_path, where):
    password, token = _secret("pw"), _secret("token")
    srv = RedisServer(tmp_path / "redis", password=password)
    url = srv.url if where == "user info" else \
        f"redis://127.0.0.1:{srv.port}/0?password={password}"
    try:
        gw = Gateway(srv, "sec", tmp_path, WORKER_QUEUE_URL=url, WORKER_LOG_LEVEL="DEBUG",
                     WORKER_API_TOKEN=token)
        w = start_worker(srv, "sec", tmp_path, WORKER_QUEUE_URL=url, WORKER_LOG_LEVEL="DEBUG")
        auth = {"Authorization": f"Bearer {token}"}
        done = gw.post("/runsync", {"input": {}}, headers=auth).json()
        assert done["status"] == "COMPLETED", done
        answers = [requests.get(gw.url + path, headers=auth, timeout=30).text
                   for path in ("/health", "/metrics", "/sec/health")]
        assert w.stop() == 0 and gw.stop() == 0
        for text in (w.text(), gw.text(), *answers):
            assert _clean(text, (password, token)) == [], text[-2000:]
        assert "127.0.0.1" in gw.text()
    finally:
        srv.close()


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=4, max_size=24),
       st.sampled_from(["", "user"]), st.sampled_from(["", ":6379"]))
@example("Sup3rPw@Secr3tHost/Tail9xyz", "", ":18301")     # the second attack's
@example("Ab#cdEfGh12", "", ":16391")                     # the first attack's
def test_no_password_survives_redaction_whatever_it_holds(password, user, port):
    """A password with '/', '?', '#', '@' or ':' unencoded ends a URL parser's host early:
    still masked, printed or scrubbed."""
    url = f"redis://{user}:{password}@127.0.0.1{port}/0"
    redaction.remember(url)
    plain = f"connecting to redis://{user}:@127.0.0.1{port}/0 ***"
    pieces = {password[i:i + 4] for i in range(len(password) - 3)} - {
        plain[i:i + 4] for i in range(len(plain) - 3)}
    for shown in (redaction.url(url), redaction.scrub(f"connecting to {url}")):
        assert not [p for p in pieces if p in shown], shown     # no piece of it


@pytest.mark.parametrize("password", ["Ab#cdEfGh12", "Ab/cdEfGh12", "Ab?cdEfGh12"])
def test_an_unreadable_queue_url_is_refused_without_its_password(tmp_path, password):
    """redis-py cannot read such a URL: the worker and the gateway say how to fix it, and
    neither prints the password or a piece of it."""
    env = {**os.environ, "WORKER_QUEUE_URL": f"redis://:{password}@127.0.0.1:1/0",
           "WORKER_ENDPOINT": "ep"}
    for args in (["gateway", "--port", "1"], [str(HANDLERS / "fleet_jobs.py")]):
        out = subprocess.run([PYTHON, "-m", "worker", *args], env=env, capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "must be percent-encoded" in out.stderr
        assert "Ab" not in out.stdout + out.stderr.replace("Abort", ""), out.stderr
