"""The queue-source base (worker/sources/queue_source.py): a new queue is one small class.

`ListQueue` below is a whole queue source — its jobs come from an in-process list — and
runs on a real supervisor and child: every job it takes ends in one report, a job the
supervisor cannot be handed is reported FAILED by the base's guard and the next runs, and
at the stop the job still running finishes within the grace before the children stop.
"""
from __future__ import annotations

import collections
import threading

from worker.config import Settings
from worker.jobs import JobState
from worker.sources.queue_source import QueueSource
from worker.targets import ScriptTarget

from tests.support import FAST, HANDLERS


class ListQueue(QueueSource):
    """Jobs from a list; the results kept by id."""

    def __init__(self, settings, target):
        super().__init__(settings, target)
        self.waiting: collections.deque = collections.deque()
        self.running: dict = {}
        self.results: dict = collections.defaultdict(list)
        self.closed_with: bool | None = None

    def held(self) -> int:
        return len(self.running)

    def take(self, room: int) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self.waiting or self.stopping.is_set(), 0.2)
            if self.stopping.is_set():
                return False
            jobs = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
            self.running.update((job["id"], job) for job in jobs)
            self._cond.notify_all()
        for job in jobs:
            self.submit(job["id"], job, age=job.pop("age", 0.0))
        return True

    def on_result(self, result) -> None:
        with self._cond:
            self.running.pop(result.job_id, None)
            self.results[result.job_id].append(result)
            self._cond.notify_all()

    def close(self, failed: bool) -> int:
        self.closed_with = failed
        return 1 if failed else 0

    # the test's side
    def put(self, *jobs) -> None:
        with self._cond:
            self.waiting.extend(jobs)
            self._cond.notify_all()

    def wait(self, ids, timeout=60.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: all(i in self.results for i in ids), timeout), \
                dict(self.results)


def start(**settings) -> tuple:
    source = ListQueue(Settings(**{**FAST, **settings}),
                       ScriptTarget(str(HANDLERS / "edges.py"), []))
    code: list = []
    runner = threading.Thread(target=lambda: code.append(source.run()), daemon=True)
    runner.start()
    return source, runner, code


def test_a_queue_built_on_the_base_reports_every_job_once_even_one_it_could_not_hand_on():
    source, runner, code = start(shutdown_grace=5.0)
    try:
        source.put({"id": "a", "input": {"echo": 1}},
                   {"id": "bad-age", "input": {"echo": 2}, "age": "soon"},   # submit raises
                   {"id": "b", "input": {"echo": 3}})
        source.wait(["a", "bad-age", "b"])
        assert source.results["a"][0].output["echo"] == 1
        assert source.results["b"][0].output["echo"] == 3
        refused = source.results["bad-age"][0]
        assert refused.state is JobState.FAILED
        assert "could not accept this job" in refused.error_info()["error_message"]
    finally:
        source.stopping.set()
        runner.join(60)
    assert code == [0] and source.closed_with is False
    assert {k: len(v) for k, v in source.results.items()} == {"a": 1, "bad-age": 1, "b": 1}
    assert source.host.sup.join(0) and source.held() == 0


def test_at_the_stop_a_running_job_finishes_within_the_grace_and_no_new_one_is_taken():
    source, runner, code = start(shutdown_grace=20.0)
    source.put({"id": "long", "input": {"do": "sleep", "seconds": 1.0}})
    with source._cond:
        assert source._cond.wait_for(lambda: "long" in source.running, 30)
    source.stopping.set()
    source.put({"id": "late", "input": {"echo": 1}})        # after the signal: not taken
    runner.join(60)
    assert code == [0]
    assert source.results["long"][0].state is JobState.COMPLETED
    assert "late" not in source.results and list(source.waiting)[0]["id"] == "late"
    assert source.taking_done.is_set() and source.host.sup.join(0)


class FaultyQueue(ListQueue):
    """Its first take raises past everything the queue itself catches."""
    faults = 1

    def take(self, room: int) -> bool:
        if self.faults:
            self.faults -= 1
            raise RuntimeError("the queue's client broke")
        return super().take(room)


def test_a_take_that_raises_ends_that_take_only_and_the_next_takes_the_job():
    source = FaultyQueue(Settings(**{**FAST, "shutdown_grace": 5.0}),
                         ScriptTarget(str(HANDLERS / "edges.py"), []))
    runner = threading.Thread(target=source.run, daemon=True)
    runner.start()
    try:
        source.put({"id": "after", "input": {"echo": 7}})
        source.wait(["after"])
        assert source.faults == 0 and source.results["after"][0].output["echo"] == 7
    finally:
        source.stopping.set()
        runner.join(60)
