"""What crosses from Redis to a worker is bytes anyone with access could have written. Each
entry, however strange, ends its job with one final record (FAILED, saying why, when it
cannot be run) — or, with no job id to report under, is logged and deleted — and the
worker goes on."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, start_worker
from worker.fleet.keys import Keys
from worker.fleet.scripts import Scripts

pytestmark = pytest.mark.skipif(REDIS is None, reason=NO_REDIS)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("entries")
    srv = RedisServer(d / "redis")
    gw = Gateway(srv, "ent", d)
    w = start_worker(srv, "ent", d)
    assert gw.post("/runsync", {"input": {}}).json()["status"] == "COMPLETED"
    yield srv, gw
    assert w.stop() == 0, w.text()
    gw.stop()
    srv.close()


def queue_raw(srv, job_id: str, data: bytes) -> None:
    """A job whose stream entry holds `data` (as if a writer other than the gateway)."""
    k = Keys("ent")
    Scripts(srv.client()).submit(keys=[k.job(job_id), k.stream, k.idem("-")],
                                 args=[job_id, data, "", "0", 60])


CASES = [
    (b"\xff\xfe not utf-8", "could not read"),
    (b"[" * 300 + b"]" * 300, "nests"),
    (b'{"id": "someone-else", "input": {}}', "entry's id"),
    (b'"a string"', "entry's id"),
    (None, "no 'input'"),
    (b'{"id": "%s", "input": {}, "policy": {"executionTimeout": -5}}', "executionTimeout"),
    (b'{"id": "%s", "input": {}, "policy": {"ttl": "soon"}}', "policy.ttl"),
]


@pytest.mark.parametrize("data, says", CASES)
def test_a_job_that_cannot_be_run_fails_alone_with_its_reason(endpoint, data, says):
    srv, gw = endpoint
    job_id = f"raw-{abs(hash((data, says)))}"
    if data is None:
        data = json.dumps({"id": job_id}).encode()
    elif b"%s" in data:
        data = data % job_id.encode()
    queue_raw(srv, job_id, data)
    ended = gw.until(job_id, lambda s: s["status"] not in ("IN_QUEUE", "IN_PROGRESS"))
    assert ended["status"] == "FAILED" and says in ended["error"], ended
    assert gw.post("/runsync", {"input": {"echo": 1}}).json()["status"] == "COMPLETED"


def test_an_entry_with_no_job_is_deleted_and_the_worker_goes_on(endpoint):
    srv, gw = endpoint
    k = Keys("ent")
    r = srv.client()
    r.xadd(k.stream, {"nothing": "here"})
    r.xadd(k.stream, {"id": "no-record", "job": "{}"})          # no hash: not the gateway's
    assert gw.post("/runsync", {"input": {"echo": 2}}).json()["status"] == "COMPLETED"
    assert r.xlen(k.stream) == 0


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) |
                              st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=12).map(lambda v: json.dumps(
                                  {"id": "X", "input": v}).encode())))
def test_any_entry_ends_its_job_once(endpoint, data):
    srv, gw = endpoint
    job_id = f"any-{abs(hash(data))}"
    if srv.client().exists(Keys("ent").job(job_id)):
        return                                   # Hypothesis repeats examples
    queue_raw(srv, job_id, data.replace(b'"id": "X"', b'"id": "%s"' % job_id.encode()))
    ended = gw.until(job_id, lambda s: s["status"] not in ("IN_QUEUE", "IN_PROGRESS"))
    assert ended["status"] in ("COMPLETED", "FAILED"), ended
    if ended["status"] == "FAILED":
        assert ended.get("error")
