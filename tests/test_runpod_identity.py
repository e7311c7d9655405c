"""What the RunPod queue source says it is: `runpod_version` is the protocol (the SDK
release we match) where the SDK sends it, and the User-Agent is the SDK's with
gpu-worker's own version as a comment, on every request to the platform."""
import platform

import runpod.agent
import runpod.user_agent
import runpod.version

from tests.fake_runpod import FakeRunPod
from tests.support import Worker
from worker.version import __version__

OURS = f"(compatible; gpu-worker/{__version__})"


def test_the_protocol_version_is_the_installed_sdks():
    from worker.version import RUNPOD_PROTOCOL_VERSION
    assert RUNPOD_PROTOCOL_VERSION == runpod.version.__version__


def test_the_user_agent_is_the_sdks_with_ours_as_a_comment(monkeypatch):
    from worker.sources.runpod_urls import user_agent
    for name in runpod.agent.known_env_vars():     # no "(via <coding agent>)" tag
        monkeypatch.delenv(name, raising=False)
    for integration in (None, "my-template"):
        if integration:
            monkeypatch.setenv("RUNPOD_UA_INTEGRATION", integration)
        else:
            monkeypatch.delenv("RUNPOD_UA_INTEGRATION", raising=False)
        env = {"RUNPOD_UA_INTEGRATION": integration} if integration else {}
        assert user_agent(env) == f"{runpod.user_agent.construct_user_agent()} {OURS}"


def test_an_odd_integration_name_cannot_break_the_header():
    from worker.sources.runpod_urls import user_agent
    ua = user_agent({"RUNPOD_UA_INTEGRATION": "a\r\nX-Injected: 1\x00é"})
    assert ua.isprintable() and ua.isascii() and "\n" not in ua
    assert "Integration/aX-Injected: 1" in ua


def test_every_request_to_the_platform_says_the_protocol_and_who_we_are(tmp_path):
    expected = (f"RunPod-Python-SDK/1.12.0 ({platform.system()} {platform.release()}; "
                f"{platform.machine()}) Language/Python {platform.python_version()} "
                f"Integration/suite-test (compatible; gpu-worker/{__version__})")
    env = {"RUNPOD_UA_INTEGRATION": "suite-test", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    with FakeRunPod(long_poll=0.3) as queue:
        w = Worker(queue, "gen_sync.py", tmp_path, **env)
        queue.add_jobs([{"id": "g", "input": {"n": 3}}])
        queue.wait_final(["g"])
        assert queue.wait_for(lambda q: sum(r[1] == "job-stop" for r in q.requests) and
                              sum(r[1] == "ping" for r in q.requests) >= 2, 30)
        assert w.stop() == 0, w.text()
        broken = Worker(queue, "raise_at_import.py", tmp_path, **env)   # setup fails
        assert broken.proc.wait(60) == 1, broken.text()
        requests = list(queue.requests)
    ops = {op for _, op, _, _ in requests}
    assert {"job-take", "job-stop", "job-stream", "job-done", "ping"} <= ops, ops
    assert any(q.get("status") == ["unhealthy"] for _, op, q, _ in requests if op == "ping")
    bad_agent = {(method, op, headers.get("User-Agent"))
                 for method, op, _, headers in requests if headers.get("User-Agent") != expected}
    # as the SDK: runpod_version on the ping and the unhealthy report only
    bad_version = {(op, str(query.get("runpod_version"))) for _, op, query, _ in requests
                   if query.get("runpod_version") != (["1.12.0"] if op == "ping" else None)}
    assert not bad_agent and not bad_version, (expected, bad_agent, bad_version)
