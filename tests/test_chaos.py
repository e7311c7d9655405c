"""Misbehaving handlers through both job sources: the stand-in RunPod queue and the local
API. After each, the worker serves the next job, no process of the job remains, and the
job's final state and reason are right."""
import json

import pytest

from tests.fake_runpod import FakeRunPod
from tests.support import gone
from tests.support import Worker

SETTINGS = {"WORKER_JOB_TIMEOUT": "1", "WORKER_STOP_GRACE": "0.5",
            "WORKER_JOB_MAX_CRASHES": "2", "WORKER_RETURN_AGGREGATE_STREAM": "true"}

# case -> (input, final state, text the error must contain)
CASES = {
    "flood": ({"do": "flood"}, "COMPLETED", None),
    "swallow": ({"do": "swallow"}, "TIMED_OUT", "execution timeout"),
    "ignore_sigterm": ({"do": "ignore_sigterm"}, "TIMED_OUT", "execution timeout"),
    "orphan": ({"do": "orphan"}, "COMPLETED", None),
    "replace_stdout": ({"do": "replace_stdout"}, "COMPLETED", None),
    "kill_child": ({"do": "kill_child"}, "FAILED", "killed the worker process 2 times"),
}


def _input(case, tmp_path):
    inp = dict(CASES[case][0])
    if case == "orphan":
        inp["pidfile"] = str(tmp_path / "orphan.pid")
    return inp


def _check_leftovers(case, tmp_path):
    if case == "orphan":
        assert gone(int((tmp_path / "orphan.pid").read_text()), timeout=15)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chaos_through_the_local_api(server, tmp_path, case):
    s = server("chaos.py", **SETTINGS)
    before = s.post("/runsync", {"input": {"do": "ok"}}).json()
    status = s.post("/runsync", {"input": _input(case, tmp_path)}).json()
    state, text = CASES[case][1], CASES[case][2]
    assert status["status"] == state, status
    if text:
        assert text in json.loads(status["error"])["error_message"]
    if case == "flood":
        chunks = s.get(f"/stream/{status['id']}").json()["stream"]
        assert [c["output"]["i"] for c in chunks] == list(range(20))
    after = s.post("/runsync", {"input": {"do": "ok"}}).json()
    assert after["status"] == "COMPLETED"
    if case in ("swallow", "ignore_sigterm", "kill_child", "orphan"):
        assert after["output"][0]["pid"] != before["output"][0]["pid"]
        assert gone(before["output"][0]["pid"])
    _check_leftovers(case, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chaos_through_the_runpod_queue(tmp_path, case):
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "chaos.py", tmp_path, **SETTINGS)
        try:
            q.add_jobs([{"id": "before", "input": {"do": "ok"}},
                        {"id": "chaos", "input": _input(case, tmp_path)},
                        {"id": "after", "input": {"do": "ok"}}])
            finals = q.wait_final(["before", "chaos", "after"], timeout=90)
            state, text = CASES[case][1], CASES[case][2]
            chaos = finals["chaos"]
            assert ("error" in chaos) == (state != "COMPLETED"), chaos
            if text:
                assert text in json.loads(chaos["error"])["error_message"]
            if case == "flood":
                assert [b["output"]["i"] for b in q.streams["chaos"]] == list(range(20))
            assert "error" not in finals["after"]
            assert all(len(q.finals[j]) == 1 for j in ("before", "chaos", "after"))
            _check_leftovers(case, tmp_path)
            assert w.stop() == 0
        finally:
            if w.proc.poll() is None:
                w.proc.kill()
