"""Security defaults: loopback by default, the token, secrets kept from user code, job ids
checked before they reach URLs or logs, hostile bodies refused without a server error."""
from pathlib import Path

import psutil
import pytest
import requests

from tests.support import ROOT, Harness
from worker.config import Settings
from worker.jobs import JobState, Reason

SECRETS = ["RUNPOD_AI_API_KEY", "WORKER_API_TOKEN"]


def test_local_api_listens_on_loopback_by_default(server):
    assert Settings.load(env={}).api_host == "127.0.0.1"
    s = server()
    listening = [c.laddr for c in psutil.Process(s.proc.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_the_child_does_not_see_the_queue_key_or_the_api_token(monkeypatch):
    monkeypatch.setenv("RUNPOD_AI_API_KEY", "secret-key")
    monkeypatch.setenv("WORKER_API_TOKEN", "secret-token")
    # the forkserver keeps the environment it started with: start a fresh one

    from worker.parent import mp_launcher
    assert not mp_launcher.live_children()
    mp_launcher.stop_template()
    h = Harness("misbehave.py")
    try:
        seen = h.run({"do": "env", "names": SECRETS + ["PATH"]}).output
        assert seen == {"RUNPOD_AI_API_KEY": False, "WORKER_API_TOKEN": False, "PATH": True}
    finally:
        h.close()
    h = Harness("misbehave.py", child_env_pass=("RUNPOD_AI_API_KEY",))
    try:
        seen = h.run({"do": "env", "names": SECRETS}).output
        assert seen == {"RUNPOD_AI_API_KEY": True, "WORKER_API_TOKEN": False}
    finally:
        h.close()
        mp_launcher.stop_template()


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "a/b", "x y", "id\nFAKE LOG LINE",
                                    "a" * 201, "é"])
def test_unsafe_job_ids_are_refused(harness, job_id):
    h = harness("misbehave.py")
    h.sup.submit({"id": job_id, "input": {}}, h.listener)
    result = h.listener.wait(["unknown"])["unknown"]     # the id itself is never echoed
    assert result.state is JobState.FAILED and result.reason is Reason.REFUSED
    assert "letters, digits" in result.error


def test_deeply_nested_and_hostile_bodies_get_4xx_not_5xx(server):
    s = server()
    deep = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = requests.post(f"{s.url}/run", data=deep, timeout=30)
    assert r.status_code == 400 and "more than 200 levels deep" in r.json()["error"]
    r = requests.post(f"{s.url}/runsync", data=b'{"input": "\xff\xfe\x00"}', timeout=30)
    assert r.status_code == 400
    with pytest.raises(requests.RequestException):
        # a 1 MB header: the server refuses or drops it, and lives on
        r = requests.get(f"{s.url}/health", headers={"X-Big": "a" * 2**20}, timeout=30)
        if r.status_code < 500:
            raise requests.RequestException(f"refused with {r.status_code}")
    assert requests.get(f"{s.url}/health", timeout=10).status_code == 200


def test_nothing_in_the_worker_unpickles():
    """Parent and child speak JSON; network input is never unpickled."""
    import re
    pattern = re.compile(r"^\s*(import (c?pickle|dill|marshal)|from (c?pickle|dill|marshal) )"
                         r"|(pickle|dill|marshal)\.loads?\(", re.M)
    for path in Path(ROOT, "worker").rglob("*.py"):
        assert not pattern.search(path.read_text()), path
