"""Secrets out of the handler's reach (worker/hardening.py): a handler that reads every
/proc/<pid>/environ and cmdline it can open finds neither the queue's key nor the API
token, though it runs as root, as these machines do, with CAP_SYS_PTRACE until the worker
takes it away: the parent and the forkserver are not dumpable, and the child holds none
of the capabilities that read a non-dumpable process (SYS_PTRACE, and SYS_ADMIN and
PERFMON, each of which does on this kernel) in any set; it is dumpable itself."""
import json
import uuid
from pathlib import Path

from tests.fake_runpod import FakeRunPod
from tests.support import Worker

READERS = (1 << 19) | (1 << 21) | (1 << 38)     # SYS_PTRACE, SYS_ADMIN, PERFMON


def test_a_handler_that_hunts_every_process_finds_no_secret(tmp_path):
    key, token = f"key-{uuid.uuid4()}", f"token-{uuid.uuid4()}"
    proxy = f"proxy-{uuid.uuid4()}"          # the webhook proxy's password (issue 40)
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "hunter.py", tmp_path, WORKER_API_TOKEN=token,
                   WORKER_WEBHOOK_PROXY=f"http://u:{proxy}@127.0.0.1:9")
        try:
            q.add_jobs([{"id": "hunt", "input": {"values": [key, token, proxy]}}])
            out = q.wait_final(["hunt"], 60)["hunt"]["output"]
        finally:
            assert w.stop() == 0, w.text()
    assert out["found"] == [], out
    for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert not int(out["caps"][name], 16) & READERS, (name, out["caps"])
    assert out["dumpable"] == 1
    assert json.dumps(out).count(key) == 0


def test_as_another_user_the_child_cannot_read_processes_the_worker_did_not_start(
        tmp_path):
    """A process the worker did not start (pid 1, a platform's shell) that runs as root
    with no capabilities: a root child reads it (same user, its capabilities a superset,
    dumpable); WORKER_CHILD_USER=nobody cannot, and a user that does not exist is a setup
    failure that says so."""
    import os
    import subprocess
    import sys
    secret = f"sidecar-{uuid.uuid4()}"
    no_caps = ("import ctypes, sys, time; sys.path.insert(0, %r); from worker import "
               "hardening as h; d = (h._Data * 2)(); ctypes.CDLL(None).capset(ctypes.byref("
               "h._Header(h._LINUX_CAPABILITY_VERSION_3, 0)), d); print('ready', flush=True); "
               "time.sleep(120)" % str(Path(__file__).resolve().parent.parent))
    sidecar = subprocess.Popen([sys.executable, "-c", no_caps], stdout=subprocess.PIPE,
                               env={**os.environ, "SIDECAR_SECRET": secret})
    assert sidecar.stdout.readline() == b"ready\n"
    try:
        for user, expect in (("", True), ("nobody", False)):
            with FakeRunPod(long_poll=0.3) as q:    # a queue each: no take left over
                w = Worker(q, "hunter.py", tmp_path, WORKER_CHILD_USER=user)
                try:
                    job = f"hunt-{user or 'root'}"
                    q.add_jobs([{"id": job, "input": {"values": [secret]}}])
                    out = q.wait_final([job], 60)[job]["output"]
                finally:
                    assert w.stop() == 0, w.text()
            assert bool(out["found"]) is expect, (user, out)
            assert out["uid"] == (65534 if user else 0)
        with FakeRunPod(long_poll=0.3) as q:
            w = Worker(q, "hunter.py", tmp_path, WORKER_CHILD_USER="no-such-user-x")
            try:
                assert w.proc.wait(60) == 2        # refused before anything starts
            finally:
                if w.proc.poll() is None:
                    w.proc.kill()
            assert "cannot run as WORKER_CHILD_USER='no-such-user-x'" in w.text()
    finally:
        sidecar.kill()
        sidecar.wait()
