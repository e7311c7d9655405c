"""A handler never gets more than a child's rights (issue 35), tried as a hostile handler
would with real workers on a stand-in queue:
- only the parent can ask the forkserver for a process: a handler that connects to its
  socket and asks (plain, or after a 3.14-style handshake with a key found in its own
  memory) gets no process, its payload never runs, the refusal is logged, the worker goes on;
- a warm import (WORKER_WARM_REFRESH) runs with a child's rights: as WORKER_CHILD_USER when
  set, without the capabilities that read the worker's /proc files, so module-level code
  finds no secret.
"""
import uuid

import pytest

from tests.fake_runpod import FakeRunPod
from tests.support import Worker

READERS = (1 << 19) | (1 << 21) | (1 << 38)     # SYS_PTRACE, SYS_ADMIN, PERFMON


def test_a_handler_that_asks_the_forkserver_for_a_process_gets_nothing(tmp_path):
    key, token = f"key-{uuid.uuid4()}", f"token-{uuid.uuid4()}"
    loot = tmp_path / "loot"
    loot.mkdir()
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "forkserver_asker.py", tmp_path, WORKER_API_TOKEN=token)
        try:
            q.add_jobs([{"id": "ask", "input": {"dir": str(loot)}}])
            out = q.wait_final(["ask"], 60)["ask"]["output"]
            # The worker goes on: the next job runs in the same child, as usual.
            q.add_jobs([{"id": "again", "input": {"dir": str(loot)}}])
            again = q.wait_final(["again"], 60)["again"]
        finally:
            assert w.stop() == 0, w.text()
    assert out["addresses"] >= 1, out            # it found the socket: the door was tried
    assert {t["mode"] for t in out["tries"]} == {"plain", "handshake"}
    for attempt in out["tries"]:
        assert attempt["pid"] is None and not attempt["marker"], (attempt, w.text())
    assert list(loot.iterdir()) == []
    assert again["status"] == "COMPLETED" if "status" in again else again.get("output")
    log = w.text()
    assert key not in log and token not in log
    refused = [line for line in log.splitlines() if "forkserver refused" in line]
    assert refused, log
    assert len(refused) == 1, refused           # logged once per peer


@pytest.mark.parametrize("user", ["", "nobody"], ids=["root", "nobody"])
def test_a_warm_import_runs_with_a_childs_rights(tmp_path, user):
    key, token = f"hunted-secret-key-{uuid.uuid4()}", f"hunted-secret-token-{uuid.uuid4()}"
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "warm_hunter.py", tmp_path, WORKER_API_TOKEN=token,
                   WORKER_WARM_REFRESH="true", WORKER_CHILD_USER=user)
        try:
            q.add_jobs([{"id": "hunt", "input": {}}])
            out = q.wait_final(["hunt"], 60)["hunt"]["output"]
        finally:
            assert w.stop() == 0, w.text()
    assert out["warm"], (out, w.text())          # the module was imported in the forkserver
    assert out["found"] == [] and out["found_now"] == [], out
    assert out["uid"] == (65534 if user else 0), out
    for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert not int(out["caps"][name], 16) & READERS, (name, out["caps"])


def test_what_runs_at_the_forkservers_start_has_no_reading_capability(tmp_path):
    """Code that runs when the forkserver's interpreter starts, before any of the worker's
    modules (a sitecustomize on PYTHONPATH here; a package's .pth file, or a module a root
    child wrote where the interpreter looks, would run the same way): the worker starts
    every program without SYS_PTRACE, SYS_ADMIN and PERFMON, so it has none of them."""
    import json
    import os
    site = tmp_path / "site"
    site.mkdir()
    seen = tmp_path / "seen"
    seen.mkdir()
    (site / "sitecustomize.py").write_text(
        "import json, os\n"
        "caps = {k: v.strip() for k, v in (l.split(':', 1) for l in "
        "open('/proc/self/status')) if k.startswith('Cap')}\n"
        "argv = open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        f"open(os.path.join({str(seen)!r}, str(os.getpid())), 'w').write("
        "json.dumps({'caps': caps, 'argv': argv}))\n")
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "hunter.py", tmp_path, PYTHONPATH=path)
        try:
            q.add_jobs([{"id": "one", "input": {"values": ["nothing"]}}])
            q.wait_final(["one"], 60)
        finally:
            assert w.stop() == 0, w.text()
    starts = [json.loads(p.read_text()) for p in seen.iterdir()]
    forkservers = [s for s in starts if "forkserver" in s["argv"]]
    assert forkservers, [s["argv"] for s in starts]
    for start in forkservers:
        for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
            assert not int(start["caps"][name], 16) & READERS, (name, start)
