"""Property tests (Hypothesis) at both edges: whatever body or job is thrown at the local
API or the stand-in queue, and whatever the handler does with it, every accepted job ends
exactly once, every refusal is a 4xx, and the worker still serves afterwards."""
import json
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from worker.jsonlimits import MAX_DEPTH

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)

# What the handler does with the job (tests/handlers/edges.py): every way it can end.
outcomes = st.one_of(
    st.builds(lambda e: {"do": "echo", "echo": e}, json_values),
    st.builds(lambda d: {"do": "nest", "depth": d},
              st.sampled_from([0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 999, 1500])),
    st.builds(lambda k: {"do": "value", "kind": k}, st.sampled_from(["big", "surrogate", "bytes"])),
    st.builds(lambda s: {"do": "sleep", "seconds": s}, st.sampled_from([0, 0.01, 0.05])),
    st.just({"do": "segfault"}),
    st.builds(lambda n: {"do": "progress", "n": n}, st.integers(0, 300)),
    st.builds(lambda n: {"do": "print", "n": n}, st.integers(0, 5)),
    json_values,                                   # not even a dict: the handler raises
)
timeouts = st.one_of(st.integers(-10, 10 ** 12), st.just(10 ** 400), st.floats(),
                     st.text(max_size=5), st.booleans(), st.none())
policies = st.fixed_dictionaries({}, optional={"executionTimeout": timeouts})
junk = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b",", b":", b"1", b"\xff", b"\xc3",
                                 b"null", b" ", b"\\", b"\xef\xbb\xbf"]),
                max_size=30).map(b"".join)


def dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(
    st.builds(lambda i, p: dumps({"input": i, "policy": p}), outcomes, policies),
    st.builds(lambda i: dumps({"input": i}), outcomes),
    st.builds(lambda i, extra: dumps({"input": i, **extra}), outcomes,
              st.dictionaries(st.sampled_from(["webhook", "s3Config", "id", "other"]),
                              json_values, max_size=2)),
    json_values.map(dumps),
    st.binary(max_size=64),
    junk,
    st.builds(lambda enc, i: json.dumps({"input": i}).encode(enc),
              st.sampled_from(["utf-16", "utf-32", "utf-8-sig"]), json_values),
)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from tests.support import Server
    s = Server("edges.py", tmp_path_factory.mktemp("fuzz-api"), WORKER_RESTART_LIMIT="1000",
               WORKER_RESULT_TTL="600")
    yield s
    s.close()


def test_any_body_at_the_local_api_is_refused_with_a_4xx_or_ends_exactly_once(api):
    session = requests.Session()
    accepted = []

    @FUZZ
    @given(body=bodies)
    def throw(body):
        r = session.post(f"{api.url}/run", data=body, timeout=60,
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
        if r.status_code == 200:
            accepted.append(r.json()["id"])
        else:
            assert r.json()["error"]

    throw()
    assert accepted, "no body was accepted: the strategy is broken"
    deadline = time.monotonic() + 180
    final = {}
    for job_id in accepted:
        while True:
            status = session.get(f"{api.url}/status/{job_id}", timeout=30).json()
            if status["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                final[job_id] = status["status"]
                break
            assert time.monotonic() < deadline, f"{job_id} never ended: {status}"
            time.sleep(0.05)
    health = session.get(f"{api.url}/health", timeout=30).json()
    counts = health["jobs"]
    ended = sum(1 for s in final.values() if s in ("COMPLETED", "FAILED", "TIMED_OUT"))
    assert counts["completed"] + counts["failed"] == ended      # each reported once
    assert health["worker"]["state"] == "running"
    r = session.post(f"{api.url}/runsync", json={"input": {"do": "echo", "echo": "after"}},
                     timeout=60)
    assert r.json()["output"]["echo"] == "after"


@pytest.fixture(scope="module")
def queue_worker(tmp_path_factory):
    from tests.fake_runpod import FakeRunPod
    from tests.support import Worker
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "edges.py", tmp_path_factory.mktemp("fuzz-queue"),
                   WORKER_RESTART_LIMIT="1000")
        yield q, w
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_any_job_from_the_queue_is_reported_exactly_once(queue_worker):
    q, w = queue_worker
    ids = []

    @FUZZ
    @given(inp=outcomes, policy=st.none() | policies, raw=st.none() | junk)
    def throw(inp, policy, raw):
        job_id = f"fz-{len(ids)}"
        ids.append(job_id)
        if raw is not None:      # a job the worker may not be able to parse, id first
            q.add_jobs([b'{"id": "' + job_id.encode() + b'", "input": ' + raw + b"}"])
            return
        job = {"id": job_id, "input": inp}
        if policy is not None:
            job["policy"] = policy
        q.add_jobs([json.loads(dumps(job))])

    throw()
    finals = q.wait_final(ids, timeout=240)
    assert set(finals) == set(ids)
    assert all(len(q.finals[j]) == 1 for j in ids), \
        {j: len(q.finals[j]) for j in ids if len(q.finals[j]) != 1}
    q.add_jobs([{"id": "after", "input": {"do": "echo", "echo": 1}}])
    assert q.wait_final(["after"], 60)["after"]["output"]["echo"] == 1
    assert w.stop() == 0
