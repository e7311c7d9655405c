"""Handler kinds and result normalisation, through a real child."""
import json

import pytest

from worker.jobs import JobState, Reason


def test_sync_result_normalisation(harness):
    h = harness("misbehave.py")
    err = h.run({"do": "error_key"})
    assert err.state is JobState.FAILED and err.reason is Reason.HANDLER_ERROR
    assert err.body == {"output": {"partial": 1}, "error": "custom failure"}
    empty = h.run({"do": "empty"})
    assert empty.state is JobState.COMPLETED and empty.body == {}
    refresh = h.run({"do": "refresh"})
    assert refresh.refresh and "refresh_worker" not in refresh.output


@pytest.mark.parametrize("handler", ["gen_sync.py", "gen_async.py"])
@pytest.mark.parametrize("aggregate", [True, False])
def test_generators_stream_in_order(harness, handler, aggregate):
    h = harness(handler, return_aggregate_stream=aggregate)
    job = h.submit({"n": 4})
    result = h.listener.wait([job])[job]
    assert result.state is JobState.COMPLETED
    chunks = h.listener.of("chunk", job)
    assert chunks == [{"i": i} for i in range(4)]
    assert result.output == (chunks if aggregate else [])
    kinds = [e[0] for e in h.listener.events if e[1] == job]
    assert kinds == ["start", "chunk", "chunk", "chunk", "chunk", "result"]


@pytest.mark.parametrize("handler", ["gen_sync.py", "gen_async.py"])
def test_generator_failing_midway_keeps_its_chunks_and_fails(harness, handler):
    h = harness(handler, return_aggregate_stream=True)
    job = h.submit({"n": 5, "fail_at": 2})
    result = h.listener.wait([job])[job]
    assert result.state is JobState.FAILED
    assert result.output == [{"i": 0}, {"i": 1}]
    assert h.listener.of("chunk", job) == [{"i": 0}, {"i": 1}]
    info = json.loads(result.error)
    assert info["error_message"] == "failed at chunk 2"
    assert h.run({"n": 1}).state is JobState.COMPLETED


def test_generator_error_chunk_ends_the_stream(harness):
    h = harness("gen_sync.py", return_aggregate_stream=True)
    job = h.submit({"n": 5, "error_at": 1})
    result = h.listener.wait([job])[job]
    assert result.state is JobState.FAILED
    assert result.body == {"error": "chunk error at 1"}     # as runpod-python 1.12 posts it
    assert h.listener.of("chunk", job) == [{"i": 0}]


def test_generator_chunk_can_ask_for_refresh(harness):
    h = harness("gen_sync.py", return_aggregate_stream=True)
    first = h.run({"n": 3, "refresh_at": 1})
    assert first.refresh and first.output == [{"i": 0}, {"i": 1}, {"i": 2}]
    h.sup.wait_until(lambda s: s.spawns == 2 and s.child_state is not None
                     and s.child_state.value == "ready", 30)
    assert h.sup.status.spawns == 2


def test_progress_updates_arrive_in_order_before_the_result(harness):
    h = harness("misbehave.py")
    job = h.submit({"do": "progress", "n": 5})
    h.listener.wait([job])
    events = [e for e in h.listener.events if e[1] == job]
    assert [e[0] for e in events] == ["start"] + ["progress"] * 5 + ["result"]
    assert [e[2] for e in events[1:6]] == [{"step": i} for i in range(5)]


def _overlap(outputs):
    spans = sorted((o["start"], o["end"]) for o in outputs)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_async_concurrency_runs_jobs_together_in_one_process(harness):
    h = harness("conc_async.py")
    ids = [h.submit({"delay": 0.3}) for _ in range(4)]
    outputs = [r.output for r in h.listener.wait(ids).values()]
    assert len({o["pid"] for o in outputs}) == 1
    assert _overlap(outputs)


def test_sync_concurrency_runs_jobs_in_threads(harness):
    h = harness("conc_sync.py")
    ids = [h.submit({"delay": 0.3}) for _ in range(4)]
    outputs = [r.output for r in h.listener.wait(ids).values()]
    assert len({o["pid"] for o in outputs}) == 1
    assert len({o["thread"] for o in outputs}) > 1
    assert _overlap(outputs)


def test_without_concurrency_jobs_run_one_at_a_time(harness):
    h = harness("async_plain.py")
    ids = [h.submit({"delay": 0.1}) for _ in range(3)]
    h.listener.wait(ids)
    starts = [i for i, e in enumerate(h.listener.events) if e[0] == "start"]
    results = [i for i, e in enumerate(h.listener.events) if e[0] == "result"]
    # each job starts only after the previous one's result
    assert starts[1] > results[0] and starts[2] > results[1]
