"""A Redis endpoint's worker runs the handler's own fitness checks, not runpod-python's
platform checks (memory, disk, a network check that dials a public DNS server): those are
for RunPod's machines, and nothing a test runs may leave loopback."""
import os
import shutil

import pytest

from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, start_worker

pytestmark = [pytest.mark.skipif(REDIS is None, reason=NO_REDIS), pytest.mark.slow]


def test_a_fleet_worker_runs_the_handlers_checks_and_not_the_platforms(tmp_path,
                                                                        monkeypatch):
    monkeypatch.delenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", raising=False)
    assert "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS" not in os.environ
    srv = RedisServer(tmp_path / "redis")
    gw = w = None
    try:
        gw = Gateway(srv, "ep", tmp_path)
        w = start_worker(srv, "ep", tmp_path, handler="fitness.py")
        job = gw.post("/runsync", {"input": {}}).json()
        assert job["status"] == "COMPLETED" and job["output"] == "fit", job
        log = w.text()
    finally:
        for p in (w, gw):
            if p is not None:
                p.kill()
        srv.close()
    assert "check: disk_has_model ran" in log and "check: backend_answers ran" in log
    if shutil.which("nvidia-smi") is None:      # else GPU checks are counted too
        assert "2 fitness check(s) passed" in log, log      # the handler's two, no others
