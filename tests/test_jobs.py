"""Result normalisation as runpod-python 1.12 does it, and the job shape."""
import json

import pytest

from worker.jobs import (JobError, StreamCollector, exception_record, execution_timeout,
                         normalise_return, validate_job)


@pytest.mark.parametrize("value, body, refresh", [
    ("text", {"output": "text"}, False),
    (None, {"output": None}, False),
    (False, {"output": False}, False),
    ([1, 2], {"output": [1, 2]}, False),
    ({}, {}, False),
    ({"a": 1}, {"output": {"a": 1}}, False),
    ({"error": "bad"}, {"error": "bad"}, False),
    ({"error": "bad", "a": 1}, {"output": {"a": 1}, "error": "bad"}, False),
    ({"error": "", "a": 1}, {"output": {"a": 1}}, False),
    ({"refresh_worker": True, "a": 1}, {"output": {"a": 1}}, True),
    ({"refresh_worker": True}, {}, True),
    ({"refresh_worker": False, "a": 1}, {"output": {"a": 1}}, False),
])
def test_normalise_return(value, body, refresh):
    assert normalise_return(value) == (body, refresh)


def test_normalise_mutates_like_the_sdk():
    value = {"error": "x", "refresh_worker": True, "keep": 1}
    normalise_return(value)
    assert value == {"keep": 1}


def test_exception_record_is_a_json_string_with_the_sdk_keys():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        record = exception_record(exc, worker_id="w1", hostname="h1")
    info = json.loads(record)
    assert info["error_type"] == "<class 'KeyError'>"
    assert info["error_message"] == "'missing'"
    assert "raise KeyError" in info["error_traceback"]
    assert (info["worker_id"], info["hostname"]) == ("w1", "h1")
    assert info["worker_version"].startswith("gpu-worker ")


@pytest.mark.parametrize("job, message", [
    ([], "must be a JSON object"),
    ({"id": "a"}, "no 'input'"),
    ({"input": 1}, "no 'id'"),
    ({"id": 5, "input": 1}, "non-empty string"),
    ({"id": "", "input": 1}, "non-empty string"),
])
def test_validate_job(job, message):
    with pytest.raises(JobError, match=message):
        validate_job(job)


def test_validate_job_default_id_and_any_input_type():
    assert validate_job({"input": None}, default_id="local_test") == \
        {"input": None, "id": "local_test"}


def test_execution_timeout():
    assert execution_timeout({"policy": {"executionTimeout": 1500}}, 9) == 1.5
    assert execution_timeout({"policy": {"executionTimeout": 0}}, 9) == 9
    assert execution_timeout({"policy": {"executionTimeout": "x"}}, 9) == 9
    assert execution_timeout({}, 0) == 0


def test_stream_collector():
    col = StreamCollector(aggregate=True)
    assert col.accept("a") == "a"
    assert col.accept({"refresh_worker": True, "b": 1}) == {"b": 1}
    assert col.accept({"error": "boom"}) is StreamCollector.STOP
    assert col.refresh
    assert col.body() == {"error": "boom"}     # an error chunk: the error alone, as the SDK
    quiet = StreamCollector(aggregate=False)
    quiet.accept("a")
    assert quiet.body() == {"output": []}
