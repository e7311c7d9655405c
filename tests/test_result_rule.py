"""One result rule for every mode: the same return value ends in the same final state
with the same body on the one-shot test, the local API, the RunPod queue and a Redis
endpoint. NaN and ±Infinity are carried as runpod-python's json.dumps writes them (NaN,
Infinity, -Infinity: Python's json and the official client read them back); a value
json.dumps cannot write fails the job the same way everywhere, with why."""
import json
import re

import pytest

from tests.fake_runpod import FakeRunPod
from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, start_worker
from tests.support import HANDLERS, PYTHON, Server, Worker, oneshot_body, run_cli

pytestmark = pytest.mark.slow
KINDS = ["nan", "infinity", "bytes", "set", "datetime", "numpy_float32", "numpy_float64",
         "numpy_int", "numpy_array", "big_int", "huge_int", "int_key", "tuple_key",
         "cyclic", "lone_surrogate", "too_large"]
SDK = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "WORKER_MAX_RESULT_MB": "1"}


def ending(body: dict) -> tuple:
    """(status, the output as JSON text) or (status, the error's type and message)."""
    if body.get("status") == "COMPLETED" or ("output" in body and "error" not in body):
        return "COMPLETED", json.dumps(body["output"], sort_keys=True)
    error = body.get("error")
    record = json.loads(error) if isinstance(error, str) and error.startswith("{") else error
    if isinstance(record, dict):
        record, error = record.get("error_type"), record.get("error_message")
    # where in the child's frame an encoder stopped differs with the job's id: not news
    return body.get("status", "FAILED"), record, re.sub(r"position \d+", "position N",
                                                         str(error))


def oneshot(tmp_path) -> dict:
    out = {}
    for kind in KINDS:
        done = run_cli([PYTHON, str(HANDLERS / "odd_results.py"), "--test_input",
                        json.dumps({"input": {"kind": kind}})], cwd=tmp_path, env=SDK)
        if done.returncode == 0:
            out[kind] = ending({"status": "COMPLETED", **oneshot_body(done.stdout)})
        else:       # the one-shot prints "error: <type>: <message>"
            line = next(x for x in done.stdout.splitlines() if x.startswith("error: "))
            kind_, error = line.removeprefix("error: ").split(": ", 1)
            out[kind] = ending({"status": "FAILED", "error": {"error_type": kind_,
                                                             "error_message": error}})
    return out


def local_api(tmp_path) -> dict:
    s = Server("odd_results.py", tmp_path, **SDK)
    try:
        return {k: ending(s.post("/runsync", {"input": {"kind": k}}).json()) for k in KINDS}
    finally:
        s.close()


def runpod_queue(tmp_path) -> dict:
    with FakeRunPod(long_poll=0.3) as queue:
        w = Worker(queue, "odd_results.py", tmp_path, **SDK)
        queue.add_jobs([{"id": k, "input": {"kind": k}} for k in KINDS])
        finals = queue.wait_final(KINDS)
        assert w.stop() == 0, w.text()
    return {k: ending({"status": "FAILED" if "error" in v else "COMPLETED", **v})
            for k, v in finals.items()}


def redis_endpoint(tmp_path) -> dict:
    srv = RedisServer(tmp_path / "redis")
    gw = w = None
    try:
        gw = Gateway(srv, "ep", tmp_path)
        w = start_worker(srv, "ep", tmp_path, handler="odd_results.py", **SDK)
        return {k: ending(gw.post("/runsync", {"input": {"kind": k}}).json()) for k in KINDS}
    finally:
        for p in (w, gw):
            if p is not None:
                p.kill()
        srv.close()


@pytest.mark.skipif(REDIS is None, reason=NO_REDIS)
def test_every_odd_result_ends_the_same_way_in_every_mode(tmp_path):
    modes = {name: fn(tmp_path) for name, fn in (
        ("one-shot", oneshot), ("local API", local_api), ("RunPod queue", runpod_queue),
        ("Redis endpoint", redis_endpoint))}
    table = "\n".join(f"{k:15} " + " | ".join(f"{m}: {modes[m][k]}"[:90] for m in modes)
                      for k in KINDS)
    print(table)
    for kind in KINDS:
        assert len({modes[m][kind] for m in modes}) == 1, table
    ends = modes["Redis endpoint"]
    assert ends["nan"] == ("COMPLETED", '{"x": NaN}')             # as runpod-python
    assert ends["infinity"] == ("COMPLETED", "[Infinity, -Infinity]")
    assert ends["big_int"] == ("COMPLETED", str(2**70))
    assert ends["int_key"][0] == "COMPLETED"              # keys as json.dumps writes them
    refused = [k for k in KINDS if ends[k][0] == "FAILED"]
    assert refused == ["bytes", "set", "datetime", "numpy_float32", "numpy_int",
                       "numpy_array", "huge_int", "tuple_key", "cyclic", "lone_surrogate",
                       "too_large"]
    assert all("not JSON-serialisable" in ends[k][2] for k in refused[:-1]), table
    assert ends["too_large"][1] == "ResultTooLarge", table       # the same bound in each
