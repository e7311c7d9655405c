"""Every buffer that holds a job's stream output is bounded in chunks and in bytes (issue
36): the local API's records, the Redis fleet's chunk lists and the RunPod lanes. Past the
bound the oldest chunks go, the job's final state still arrives, and the drop is said once
in the log and counted in the job's record (streamDropped)."""
import json
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from tests.fake_runpod import FakeRunPod
from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, start_worker
from tests.support import Server, Worker
from worker import stream_bound
from worker.stream_bound import MAX_CHUNKS, Unread

SAID = "stream output not read fast enough"
LIMIT_MB = 0.5        # WORKER_MAX_RESULT_MB: 512 KiB of chunks held unread (10,000 small
LIMIT = stream_bound.max_bytes(LIMIT_MB)        # chunks fit: the count bound comes first)
PAD = 10_000          # a chunk of about 10 KB: 200 of them pass the byte bound


def held_bytes(stream: list) -> int:
    return sum(len(stream_bound.encode(c["output"])) for c in stream)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.lists(st.tuples(st.booleans(), st.integers(0, 6000)),
                                      max_size=300))
def test_unread_chunks_stay_within_the_bound_and_in_order(limit, steps):
    """Whatever comes and whenever it is read: within the bound, oldest dropped first,
    every chunk either read or counted as dropped, none both."""
    unread, read, sent = Unread(limit), [], 0
    for reading, nbytes in steps:
        if reading:
            read += unread.drain_items()
        else:
            unread.add(sent, nbytes)
            sent += 1
        assert len(unread.items) <= MAX_CHUNKS and unread.bytes <= limit
        assert unread.bytes == sum(n for _, n in unread.items)
    kept = read + list(unread.items)
    assert [v for v, _ in kept] == sorted(v for v, _ in kept)       # in order
    assert len(kept) + unread.dropped == sent


def unread_past_both_bounds(api, extra: int, timeout: float) -> tuple:
    """Through a server or a gateway: a job yielding 10,000 + `extra` small chunks, one
    yielding 200 of about 10 KB, nobody reading; their /stream answers and the second's
    final /status."""
    many = api.post("/run", {"input": {"n": MAX_CHUNKS + extra}}).json()["id"]
    api.until(many, lambda st: st["status"] == "COMPLETED", timeout)
    stream = api.get(f"/stream/{many}").json()
    big = api.post("/run", {"input": {"n": 200, "pad": PAD}}).json()["id"]
    done = api.until(big, lambda st: st["status"] == "COMPLETED", 60)
    return stream, api.get(f"/stream/{big}").json(), done


def assert_newest_kept(extra: int, stream: dict, chunks: dict, done: dict) -> None:
    # The count: the newest 10,000 kept, the rest counted.
    assert [c["output"]["i"] for c in stream["stream"]] == list(range(extra, MAX_CHUNKS + extra))
    assert stream["streamDropped"] == extra and stream["status"] == "COMPLETED"
    # The bytes: the newest that fit, the rest counted, in the record too.
    kept = [c["output"]["i"] for c in chunks["stream"]]
    assert held_bytes(chunks["stream"]) <= LIMIT < held_bytes(chunks["stream"]) + PAD + 100
    assert kept == list(range(200 - len(kept), 200))
    assert chunks["streamDropped"] == done["streamDropped"] == 200 - len(kept)


def test_the_local_api_holds_at_most_the_bound_of_unread_chunks(tmp_path):
    s = Server("gen_sync.py", tmp_path, WORKER_MAX_RESULT_MB=str(LIMIT_MB))
    try:
        found = unread_past_both_bounds(s, 5000, 120)
        ok = s.post("/runsync", {"input": {"n": 2}}).json()
    finally:
        s.close()
    assert_newest_kept(5000, *found)
    assert ok["status"] == "COMPLETED" and "streamDropped" not in ok
    log = s.log.read_text()
    assert log.count(SAID) == 2, log            # once per job


@pytest.mark.skipif(REDIS is None, reason=NO_REDIS)
def test_the_fleet_holds_at_most_the_bound_of_unread_chunks(tmp_path):
    srv = RedisServer(tmp_path / "redis")
    gw = Gateway(srv, "gen", tmp_path)
    w = start_worker(srv, "gen", tmp_path, handler="gen_sync.py",
                     WORKER_MAX_RESULT_MB=str(LIMIT_MB))
    try:
        found = unread_past_both_bounds(gw, 3000, 180)
        # Read as it comes: nothing is dropped.
        read = gw.post("/run", {"input": {"n": 20, "pad": 1000, "delay": 0.05}}).json()["id"]
        got = []
        while True:
            part = gw.get(f"/stream/{read}").json()
            got += part["stream"]
            if part["status"] == "COMPLETED":
                break
            time.sleep(0.05)
        got += gw.get(f"/stream/{read}").json()["stream"]
    finally:
        assert w.stop() == 0, w.text()
        assert gw.stop() == 0, gw.text()
        srv.close()
    assert_newest_kept(3000, *found)
    assert [c["output"]["i"] for c in got] == list(range(20))
    assert w.text().count(SAID) == 2, w.text()


def test_a_runpod_lane_holds_at_most_the_bound_of_waiting_chunks(tmp_path):
    """The platform takes the first chunk only once the job has ended in the worker (every
    chunk produced) and the worker has said it drops some: meanwhile the chunks wait in
    the job's lane, within the bound."""
    log = tmp_path / "worker.log"
    said = threading.Event()

    def hold_first_chunk(kind, n):
        if kind == "stream" and n == 1:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = log.read_text()
                if SAID in text and "job COMPLETED" in text:
                    break
                time.sleep(0.05)
            said.set()
        return None

    with FakeRunPod(long_poll=0.3, fault=hold_first_chunk) as q:
        w = Worker(q, "gen_sync.py", tmp_path, WORKER_MAX_RESULT_MB=str(LIMIT_MB))
        try:
            q.add_jobs([{"id": "big", "input": {"n": 300, "pad": PAD}}])
            final = q.wait_final(["big"], 90)["big"]
        finally:
            assert w.stop() == 0, w.text()
    assert said.is_set()
    got = [s["output"] for s in q.streams["big"]]
    # The first went out before the lane filled; then the newest that fit the bound.
    waited = got[1:]
    assert sum(len(stream_bound.encode(c)) for c in waited) <= LIMIT, len(waited)
    assert [c["i"] for c in waited] == list(range(300 - len(waited), 300))
    assert final["output"] == [] and len(q.finals["big"]) == 1
    assert w.text().count(SAID) == 1, w.text()
    assert json.dumps(final)            # the final state arrived, once


def test_the_local_api_bounds_results_progress_and_finished_records(tmp_path):
    """A result over WORKER_MAX_RESULT_MB is FAILED, as every source reports it; a progress
    update over it is not kept; finished results hold at most WORKER_API_QUEUE_MB, the
    oldest records dropped before their TTL past it."""
    s = Server("outputs.py", tmp_path, WORKER_MAX_RESULT_MB="0.5", WORKER_API_QUEUE_MB="2")
    try:
        big = s.post("/runsync", {"input": {"result": 2**20}}).json()
        wide = s.post("/runsync", {"input": {"result": 150_000, "emoji": True}}).json()
        job = s.post("/run", {"input": {"progress": 1, "size": 2**20, "last": "small",
                                        "hold": 60}}).json()["id"]
        shown = s.until(job, lambda st: st.get("output") == "small")
        s.post(f"/cancel/{job}")
        ids = [s.post("/runsync", {"input": {"result": 400_000}}).json()["id"]
               for _ in range(8)]
        first, last = (s.get(f"/status/{i}") for i in (ids[0], ids[-1]))
    finally:
        s.close()
    log = s.log.read_text()
    assert big["status"] == "FAILED" and "ResultTooLarge" in big["error"], big
    assert "output" not in big
    assert wide["status"] == "FAILED", wide     # 150,000 characters, 600,000 bytes
    assert shown["status"] == "IN_PROGRESS"
    assert log.count("over WORKER_MAX_RESULT_MB: not kept") == 1
    assert first.status_code == 404 and last.json()["status"] == "COMPLETED"
    assert "dropped before WORKER_RESULT_TTL" in log


def test_progress_updates_waiting_for_redis_are_one_the_latest():
    """A queue worker holds one progress update per job for the writer, the newest,
    however many come while the server cannot take them; one the server could not take is
    written again, unless a newer one came."""
    from worker.sources.redis_chunks import Outgoing
    written, failing = [], [True]

    def write_progress(data):
        if failing[0]:
            raise ConnectionError("the server cannot be reached")
        written.append(json.loads(data))
        return 1
    out = Outgoing("job", LIMIT, lambda items, dropped: 1, write_progress)
    queued = [out.progress(f"{'p' * 10_000}{i}") for i in range(20_000)]
    assert queued.count(True) == 1                      # one write waits in the FIFO
    with pytest.raises(ConnectionError):
        out.flush_progress()                            # the outage: kept for the retry
    failing[0] = False
    assert out.progress("newer") is True
    out.flush_progress()
    assert out.flush_progress() == 1                    # the newer one went already
    assert written == ["newer"]


def test_webhooks_waiting_for_a_silent_receiver_are_bounded(tmp_path):
    """A receiver that accepts and never answers holds each sender for its deadline: the
    bodies waiting are bounded by WORKER_API_QUEUE_MB (the rest not sent, said), and the
    records they came from are not kept alive by them."""
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)
    hook = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    s = Server("outputs.py", tmp_path, WORKER_MAX_RESULT_MB="1", WORKER_API_QUEUE_MB="2",
               WORKER_WEBHOOK_ALLOW="127.0.0.1")
    try:
        finals = [s.post("/runsync", {"input": {"result": 500_000}, "webhook": hook}).json()
                  for _ in range(12)]
    finally:
        silent.close()          # the senders' tries end (refused): the worker may stop
        s.close()
    log = s.log.read_text()
    assert all(f["status"] == "COMPLETED" for f in finals)
    refused = log.count("webhooks wait already for receivers that are slow to answer")
    assert 12 - 4 <= refused < 12, log[-3000:]       # 2 MiB holds 4 bodies of 500 KB


def test_a_result_the_parent_cannot_encode_ends_failed_once(tmp_path):
    """A hostile child's result with a lone surrogate: decoded, not encodable. The record
    ends FAILED with why (it did not end at all once the store measured results), once;
    the next job is served."""
    s = Server("surrogate_liar.py", tmp_path)
    try:
        lie = s.post("/runsync", {"input": {"lie": True}}).json()
        after = s.post("/runsync", {"input": {}}).json()
        health = s.get("/health").json()["jobs"]
    finally:
        s.close()
    assert lie["status"] == "FAILED" and "ResultUnencodable" in lie["error"], lie
    assert after["status"] == "COMPLETED" and after["output"] == "ok"
    assert health["failed"] == 1 and health["completed"] == 1, health


def test_chunks_left_unread_count_in_what_finished_records_hold(tmp_path):
    """A finished job's chunks nobody read are held with its record: they count toward
    WORKER_API_QUEUE_MB like results (the oldest records go first)."""
    s = Server("gen_sync.py", tmp_path, WORKER_MAX_RESULT_MB="0.5", WORKER_API_QUEUE_MB="1")
    try:
        ids = [s.post("/runsync", {"input": {"n": 40, "pad": PAD}}).json()["id"]
               for _ in range(4)]                 # about 400 KB unread each
        first, last = (s.get(f"/status/{i}") for i in (ids[0], ids[-1]))
        read = s.get(f"/stream/{ids[-1]}").json()
    finally:
        s.close()
    assert first.status_code == 404 and last.json()["status"] == "COMPLETED"
    assert len(read["stream"]) == 40
