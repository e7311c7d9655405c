"""Secrets out of the handler's reach (worker/hardening.py): a handler that reads every
/proc/<pid>/environ and cmdline it can open finds neither the queue's key nor the API
token, though it runs as root, as these machines do, with CAP_SYS_PTRACE until the worker
takes it away: the parent and the forkserver are not dumpable, and the child holds none
of the capabilities that read a non-dumpable process (SYS_PTRACE, and SYS_ADMIN and
PERFMON, each of which does on this kernel) in any set; it is dumpable itself."""
import json
import uuid

from tests.fake_runpod import FakeRunPod
from tests.support import Worker

READERS = (1 << 19) | (1 << 21) | (1 << 38)     # SYS_PTRACE, SYS_ADMIN, PERFMON


def test_a_handler_that_hunts_every_process_finds_no_secret(tmp_path):
    key, token = f"key-{uuid.uuid4()}", f"token-{uuid.uuid4()}"
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "hunter.py", tmp_path, WORKER_API_TOKEN=token)
        try:
            q.add_jobs([{"id": "hunt", "input": {"values": [key, token]}}])
            out = q.wait_final(["hunt"], 60)["hunt"]["output"]
        finally:
            assert w.stop() == 0, w.text()
    assert out["found"] == [], out
    for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert not int(out["caps"][name], 16) & READERS, (name, out["caps"])
    assert out["dumpable"] == 1
    assert json.dumps(out).count(key) == 0
