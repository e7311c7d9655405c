"""A spare never shares what it cannot have: a handler that starts its server on a fixed
port in a subprocess at import (as worker-sglang does) gets no spare — the spare's own
server failed "address in use" in a process it started, though its import was answered
by the active child's server — and /health says why; after the active child crashes, the
next child has a server of its own and jobs go on."""
import os
import signal

from tests.support import Server, _free_port


def test_a_spare_whose_server_could_not_start_is_not_kept(tmp_path):
    s = Server("fixed_port_server.py", tmp_path, WORKER_SPARE="on",
               FIXED_PORT=str(_free_port()))
    try:
        worker = s.health_until(lambda w: w["children"][0]["spare"]["off"])
        assert "cannot set up beside the first" in worker["children"][0]["spare"]["off"]
        first = s.post("/runsync", {"input": {}}).json()
        assert first["status"] == "COMPLETED" and first["output"]["own_server"], first
        os.kill(worker["child"]["pid"], signal.SIGKILL)       # the active child crashes
        after = s.health_until(lambda w: w["child"] and w["child"]["pid"] !=
                               worker["child"]["pid"] and w["child"]["state"] == "ready")
        job = s.post("/runsync", {"input": {}}).json()
        assert job["status"] == "COMPLETED", job
        assert job["output"]["own_server"] and job["output"]["server"] != \
            first["output"]["server"], job
        assert after["children"][0]["spare"]["promotions"] == 0
        assert s.log.read_text().count("cannot set up beside the first") >= 1
    finally:
        s.close()
