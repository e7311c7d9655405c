"""The atomic steps (worker/fleet/scripts.py) in every order Hypothesis finds, on a real
Redis server: three workers and the gateway acting on one job — reads, reclaims after a
lease, renewals, releases, finishes, cancels. Whatever the order, the job is never lost
(no final record: its entry is still in the stream) and ends once (one final record,
counted once, never pending afterwards)."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fleet_support import NO_REDIS, REDIS, RedisServer
from worker.fleet.keys import GROUP, RELEASED, Keys
from worker.fleet.scripts import Scripts

pytestmark = pytest.mark.skipif(REDIS is None, reason=NO_REDIS)
WORKERS = ("a", "b", "c")
MAX_DELIVERIES = 3
STEP = st.tuples(st.sampled_from(["read", "reclaim", "renew", "finish", "release",
                                  "cancel", "cancel_queued"]),
                 st.sampled_from(WORKERS),
                 st.sampled_from(["COMPLETED", "FAILED", "CANCELLED"]))


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("scripts"))
    yield srv.client()
    srv.close()


class World:
    def __init__(self, r):
        r.flushall()
        self.r, self.k, self.s = r, Keys("ep"), Scripts(r)
        r.xgroup_create(self.k.stream, GROUP, id="0", mkstream=True)
        self.s.submit(keys=[self.k.job("j"), self.k.stream, self.k.idem("-")],
                      args=["j", json.dumps({"id": "j", "input": {}}), "", "0", 60])
        self.holds: dict = {}          # worker -> (entry, fence)
        self.oks: list = []            # finishes (and cancels) that wrote the final record

    def keys6(self):
        k = self.k
        return [k.job("j"), k.stream, k.hooks, k.ended, k.counts, k.chunks("j")]

    def start(self, w, entries):
        for entry, fields in entries:
            if fields is None:
                continue
            kind, *rest = self.s.start(keys=[self.k.job("j"), self.k.stream],
                                       args=[GROUP, entry, w, MAX_DELIVERIES])
            if kind in (b"run", b"cancel", b"dead"):
                self.holds[w] = (entry, rest[0])

    def step(self, action, w, state):
        k, r = self.k, self.r
        if action == "read":
            got = r.xreadgroup(GROUP, w, {k.stream: ">"}, count=1)
            self.start(w, got[0][1] if got else [])
        elif action == "reclaim":                       # as if every lease had run out
            self.start(w, r.xautoclaim(k.stream, GROUP, w, 0, "0-0", count=1)[1])
        elif action == "renew" and w in self.holds:
            entry, fence = self.holds[w]
            if self.s.renew(keys=[k.job("j"), k.stream], args=[GROUP, w, entry, fence]) == 0:
                del self.holds[w]                        # fenced: it stops its run
        elif action == "finish" and w in self.holds:
            entry, fence = self.holds.pop(w)
            answer = self.s.finish(keys=self.keys6() + [k.dead],
                                   args=[GROUP, entry, fence, state, json.dumps({"s": state}),
                                         60, "j", "", "", 100])
            if answer == b"ok":
                self.oks.append(state)
        elif action == "release" and w in self.holds:
            entry, fence = self.holds.pop(w)
            self.s.release(keys=[k.job("j"), k.stream],
                           args=[GROUP, entry, fence, 10_000, RELEASED])
        elif action in ("cancel", "cancel_queued"):
            answer = self.s.cancel(keys=self.keys6(),
                                   args=[GROUP, json.dumps({"s": "CANCELLED"}), 60,
                                         "1" if action == "cancel_queued" else "0", "j"])
            if answer == b"CANCELLED":
                self.oks.append("CANCELLED")

    def check(self):
        k, r = self.k, self.r
        rec = r.hgetall(k.job("j"))
        counted = sum(int(v) for v in r.hgetall(k.counts).values())
        pending = r.xpending(k.stream, GROUP)["pending"]
        assert len(self.oks) <= 1, self.oks                   # one writer won, once
        if b"final" in rec:
            assert counted == 1 and len(self.oks) == 1
            assert rec[b"status"].decode() == self.oks[0]
            assert pending == 0                               # nothing left to redeliver
        else:
            assert counted == 0 and not self.oks
            assert r.xlen(k.stream) == 1                      # not lost: still queued


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, max_size=25))
def test_any_order_of_steps_ends_the_job_once_and_loses_nothing(redis_client, steps):
    world = World(redis_client)
    for action, w, state in steps:
        world.step(action, w, state)
        world.check()
    # Then the workers that still hold it finish, and a fresh one drains the rest.
    for w in list(world.holds):
        world.step("finish", w, "COMPLETED")
        world.check()
    for _ in range(MAX_DELIVERIES + 2):
        world.step("reclaim", "d", "")
        world.step("read", "d", "")
        world.step("finish", "d", "COMPLETED")
        world.check()
    assert b"final" in redis_client.hgetall(world.k.job("j"))


def test_an_idempotency_key_lives_as_long_as_its_job_s_record(redis_client):
    r = redis_client
    r.flushall()
    k, s = Keys("ep"), Scripts(redis_client)

    def submit(job_id):
        return s.submit(keys=[k.job(job_id), k.stream, k.idem("key")],
                        args=[job_id, "{}", "", "1", 3600])
    assert submit("a") == [1, b"a"]
    assert submit("b") == [0, b"a"]                      # the same job
    s.finish(keys=[k.job("a"), k.stream, k.hooks, k.ended, k.counts, k.chunks("a"),
                   k.dead], args=[GROUP, b"0-0", "", "COMPLETED", "{}", 60, "a", "", "", 10])
    assert 0 < r.ttl(k.idem("key")) <= 60                 # the record's expiry now
    r.delete(k.job("a"))                                 # the record is gone (expired)
    assert submit("c") == [1, b"c"]                      # the key names a new job


def test_a_chunk_batch_the_server_ran_before_a_timeout_is_not_written_twice(redis_client):
    """The worker's chunk write timed out after the server ran it (an outage, a pause): its
    retry carries the same batch number and is a no-op; newer chunks follow in order."""
    from worker.sources.redis_chunks import Outgoing
    w = World(redis_client)
    got = redis_client.xreadgroup(GROUP, "w1", {w.k.stream: ">"}, count=1)
    w.start("w1", got[0][1])
    fence = w.holds["w1"][1]
    timeouts = [1]

    def write(seq, items, dropped):
        answer = w.s.chunk(keys=[w.k.job("j"), w.k.chunks("j")],
                           args=[fence, 10_000, 2**20, dropped, seq, *items])
        if timeouts[0]:                     # ran, but its answer was lost
            timeouts[0] -= 1
            raise TimeoutError("no answer in time")
        return answer
    out = Outgoing("j", 2**20, write, lambda data: 1)
    for i in range(3):
        out.add(i)
    with pytest.raises(TimeoutError):
        out.flush()
    out.add(3)                              # comes while the writer waits out the outage
    out.flush()                             # the retry: the same batch, then the newer one
    held = [json.loads(c) for c in redis_client.lrange(w.k.chunks("j"), 0, -1)]
    assert held == [0, 1, 2, 3]
