"""Nothing a child sends grows the parent beyond the bytes that actually arrived (issue 36):
a frame header is a promise, not an allocation; one above the channel's ceiling is a
garbled channel (the child is replaced, its job fails once); the worker goes on."""
import psutil

from tests.fake_runpod import FakeRunPod
from tests.support import Worker

MiB = 2**20


def test_a_frame_header_never_sizes_the_parents_memory(tmp_path):
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "frame_liar.py", tmp_path, WORKER_HEARTBEAT_TIMEOUT="3")
        try:
            q.add_jobs([{"id": "warm", "input": {"announce": 0}}])
            assert q.wait_final(["warm"], 60)["warm"]["output"] == "ok"
            parent = psutil.Process(w.proc.pid)
            before = parent.memory_info().rss
            # 20 bytes announcing 512 MiB: the rest never comes; the heartbeat stops too.
            q.add_jobs([{"id": "lie", "input": {"announce": 512 * MiB, "then": 16}}])
            lie = q.wait_final(["lie"], 60)["lie"]
            grown = parent.memory_info().rss - before
            # Above any frame this channel takes (2 GiB): a garbled channel at once.
            q.add_jobs([{"id": "huge", "input": {"announce": 3 * 2**30, "then": 0}}])
            huge = q.wait_final(["huge"], 60)["huge"]
            q.add_jobs([{"id": "after", "input": {"announce": 0}}])
            after = q.wait_final(["after"], 60)["after"]
        finally:
            assert w.stop() == 0, w.text()
    assert grown < 32 * MiB, (grown / MiB, w.text())
    assert "error" in lie and "error" in huge, (lie, huge)

    assert after["output"] == "ok"
    assert all(len(q.finals[job]) == 1 for job in ("warm", "lie", "huge", "after"))
    assert "more than the 2147483648 this channel takes" in w.text()
