"""User code is contained: any BaseException from any user callback (the handler, a
generator, an async handler, the concurrency_modifier) ends that one job once — FAILED,
or, from the modifier after a finished job, that job as it finished — and the next job
runs; a handler that forks and returns in the fork leaves the job loop to the child.
Real children (tests/handlers/raiser.py); Hypothesis picks the mode, the place and the
type."""
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support import HANDLERS, Harness
from worker.jobs import JobState

MODES = ["inline", "gen", "threads", "tasks", "agen"]
TYPES = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError", "Custom",
         "ValueError", "StopIteration", "StopAsyncIteration", "RecursionError",
         "MemoryError"]


@pytest.fixture(scope="module")
def harnesses():
    made: dict = {}

    def get(mode):
        if mode not in made:
            made[mode] = Harness(str(HANDLERS / "raiser.py"), argv=[mode])
        return made[mode]
    yield get
    for h in made.values():
        h.close()


def _ends_once_and_the_next_runs(h, inp, expect):
    job = h.submit(inp)
    result = h.listener.wait([job], 60)[job]
    assert result.state is expect, (inp, result.state, result.body)
    after = h.submit({})
    assert h.listener.wait([after], 60)[after].state is JobState.COMPLETED, inp
    assert h.listener.counts[job] == 1 and h.listener.counts[after] == 1
    return result


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), name=st.sampled_from(TYPES),
       place=st.sampled_from(["handler", "modifier"]))
def test_any_exception_from_any_user_callback_ends_its_job_once(harnesses, mode, name,
                                                                 place):
    h = harnesses(mode)
    if place == "handler":
        result = _ends_once_and_the_next_runs(h, {"raise": name}, JobState.FAILED)
        kind = result.error_info()["error_type"]
        # (a StopIteration out of a generator is a RuntimeError in Python: PEP 479)
        assert name in kind or (name.startswith("Stop") and "RuntimeError" in kind), kind
    elif mode in ("threads", "tasks", "agen"):   # raised after the job, by the modifier
        _ends_once_and_the_next_runs(h, {"modifier": name}, JobState.COMPLETED)


@pytest.mark.parametrize("mode", ["inline", "threads", "tasks"])
def test_a_handler_that_forks_and_returns_in_the_fork_does_not_take_the_channel(
        harnesses, mode):
    h = harnesses(mode)
    first = h.run({"fork": True})
    assert first.state is JobState.COMPLETED and first.output["in"] == "child"
    fork = first.output["fork"]
    for _ in range(3):
        nxt = h.run({})
        assert nxt.state is JobState.COMPLETED and nxt.output["pid"] == first.output["pid"]
    assert _ends(fork, 60), "the fork went on running after its handler returned"


def _ends(pid, timeout):
    """Wait for `pid` to exit (gone, or a zombie its parent has not reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
