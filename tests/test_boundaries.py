"""Where bytes and objects cross into and out of the child: every job ends once, with a
clear error where it must fail, and the next job still runs. Real supervisors over real
children (tests/handlers/edges.py in each of its modes)."""
import os

import pytest

from worker.jobs import JobState, Reason
from worker.jsonlimits import MAX_DEPTH

MODES = ["inline", "threads", "tasks"]


def message(result):
    return result.error_info()["error_message"]


@pytest.mark.parametrize("mode", MODES)
def test_outputs_nested_up_to_the_limit_pass_and_deeper_ones_fail_clearly(harness, mode):
    h = harness("edges.py", argv=[mode])
    ok = h.run({"do": "nest", "depth": MAX_DEPTH})
    assert ok.state is JobState.COMPLETED, ok.error
    depth, value = 0, ok.output
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert depth == MAX_DEPTH
    for depth in (MAX_DEPTH + 1, 900, 1000, 5000):     # over the limit, near and past Python's
        bad = h.run({"do": "nest", "depth": depth})
        assert bad.state is JobState.FAILED and bad.reason is Reason.HANDLER_ERROR
        assert "cannot be sent back" in message(bad), message(bad)
    assert h.run({"do": "echo", "echo": 1}).output["echo"] == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["big", "surrogate", "bytes"])
def test_values_json_cannot_carry_fail_that_job_only(harness, mode, kind):
    h = harness("edges.py", argv=[mode])
    bad = h.run({"do": "value", "kind": kind})
    assert bad.state is JobState.FAILED and "cannot be sent back" in message(bad)
    assert h.run({"do": "echo", "echo": kind}).output["echo"] == kind


@pytest.mark.parametrize("depth, ok", [(MAX_DEPTH - 1, True), (MAX_DEPTH + 5, False)])
def test_a_job_input_nested_past_the_limit_is_refused_by_the_child_not_lost(harness, depth, ok):
    """A job handed straight to the supervisor (no HTTP edge) still ends once."""
    h = harness("edges.py")
    value = "x"
    for _ in range(depth):
        value = [value]
    result = h.run({"do": "echo", "echo": value})
    assert (result.state is JobState.COMPLETED) == ok


@pytest.mark.parametrize("timeout", [10 ** 400, -5, "1000", float("inf"), float("nan"), True,
                                     [1], 30 * 24 * 3600 * 1000 + 1])
def test_an_execution_timeout_that_is_not_a_sane_number_is_refused_and_the_worker_goes_on(
        harness, timeout):
    h = harness("edges.py")
    bad = h.run({"do": "echo"}, policy={"executionTimeout": timeout})
    assert bad.state is JobState.FAILED and bad.reason is Reason.REFUSED
    assert "executionTimeout" in message(bad)
    assert h.run({"do": "echo", "echo": 2}, policy={"executionTimeout": 0}).output["echo"] == 2


def test_the_longest_execution_timeout_allowed_runs_its_job(harness):
    """30 days is allowed; the supervisor's sleep until that deadline used to overflow
    select's milliseconds (past ~24.8 days) and end the loop (exit 70), when no nearer
    deadline (a heartbeat's) came first."""
    h = harness("edges.py", heartbeat_timeout=0)
    job = h.run({"do": "sleep", "seconds": 0.3},
                policy={"executionTimeout": 30 * 24 * 3600 * 1000})
    assert job.state is JobState.COMPLETED, message(job)
    assert h.run({"do": "echo", "echo": 3}).output["echo"] == 3


def test_a_job_that_breaks_the_supervisor_fails_alone_and_the_loop_goes_on(harness):
    class Hostile(dict):
        def get(self, *a):
            raise OSError("a job object that fails when read")

    h = harness("edges.py")
    h.sup.submit(Hostile(id="hostile", input={}), h.listener)
    result = h.listener.wait(["unknown"])["unknown"]
    assert result.state is JobState.FAILED and "OSError" in message(result)
    assert h.run({"do": "echo", "echo": 3}).output["echo"] == 3
    assert h.sup.join(0) is False


def test_a_job_id_reused_while_its_abandoned_run_ends_gets_its_own_result(harness):
    """Threads mode: the first run times out at 0.2 s but its thread is in a C sleep, so
    its cancellation (and the child's acknowledgement) comes at 1 s. The second run of the
    same id, submitted at once and longer, must report its own result, not the old run's
    late CANCELLED (matching by id did that), and never run beside the old one."""
    h = harness("edges.py", argv=["threads"])
    h.sup.submit({"id": "same", "input": {"do": "sleep", "seconds": 1.0, "tag": "old"},
                  "policy": {"executionTimeout": 200}}, h.listener)
    h.listener.wait_for(lambda c: "same" in c.results)
    first = h.listener.results.pop("same")
    assert first.state is JobState.TIMED_OUT
    h.sup.submit({"id": "same", "input": {"do": "sleep", "seconds": 1.5, "tag": "new"}},
                 h.listener)
    second = h.listener.wait(["same"])["same"]
    assert second.state is JobState.COMPLETED, second.error
    assert second.output == {"slept": 1.5, "tag": "new"}


@pytest.mark.parametrize("mode", ["threads", "tasks"])
def test_a_crash_fails_only_the_job_that_causes_it_not_its_neighbours(harness, mode):
    h = harness("edges.py", argv=[mode], job_max_crashes=1)
    good = [h.submit({"do": "sleep", "seconds": 0.5, "tag": i}) for i in range(3)]
    poison = h.submit({"do": "segfault", "after": 0.1})
    results = h.listener.wait(good + [poison])
    for job in good:
        assert results[job].state is JobState.COMPLETED, results[job].error
    assert results[poison].state is JobState.FAILED
    assert results[poison].reason is Reason.WORKER_LOST
    assert "SIGSEGV" in message(results[poison])
    assert h.sup.state.value == "running"


def test_poison_inputs_between_successes_never_trip_the_breaker(harness):
    h = harness("edges.py", restart_limit=2, restart_window=600)
    jobs = [h.submit({"do": "segfault"} if i % 3 == 2 else {"do": "echo", "echo": i})
            for i in range(12)]
    results = h.listener.wait(jobs)
    states = [results[j].state for j in jobs]
    assert states == [JobState.FAILED if i % 3 == 2 else JobState.COMPLETED for i in range(12)]
    assert h.sup.state.value == "running"


def test_children_that_die_before_finishing_any_job_trip_the_breaker(harness):
    h = harness("edges.py", restart_limit=3, restart_window=600)
    jobs = [h.submit({"do": "segfault"}) for _ in range(5)]
    results = h.listener.wait(jobs)
    assert all(r.state is JobState.FAILED for r in results.values())
    assert h.sup.wait_until(lambda s: s.state.value == "broken", 30)
    assert "3 worker processes in a row died before finishing a job" in h.sup.failure_message


@pytest.mark.parametrize("mode", MODES)
def test_every_line_a_job_prints_carries_its_id_even_an_unfinished_last_line(harness, mode):
    import threading
    lines = []
    arrived = threading.Condition()

    def sink(stream, line, ids):
        with arrived:
            lines.append((line, ids))
            arrived.notify_all()

    h = harness("edges.py", argv=[mode], sink=sink)
    jobs = [h.submit({"do": "print", "n": 3, "gap": 0.02}) for _ in range(3)]
    h.listener.wait(jobs)
    with arrived:      # the output pipe and the result channel are read by two threads
        assert arrived.wait_for(lambda: sum(line.endswith(" partial") for line, _ in lines)
                                == len(jobs), 30), lines
    for job in jobs:
        mine = [(line, ids) for line, ids in lines if line.startswith(job + " ")]
        assert [line for line, _ in mine] == [f"{job} line {i}" for i in range(3)] + \
            [f"{job} partial"], lines
        assert all(ids == (job,) for _, ids in mine), mine


def test_progress_values_the_supervisor_hears_are_the_jobs_own(harness):
    h = harness("edges.py", argv=["threads"])
    jobs = [h.submit({"do": "progress", "n": 50}) for _ in range(4)]
    results = h.listener.wait(jobs)
    for job in jobs:
        assert results[job].output == {"progressed": 50}
        assert h.listener.of("progress", job) == [{"i": i} for i in range(50)]


def test_secrets_are_not_in_the_childs_environment_its_proc_environ_or_its_settings(
        monkeypatch):

    from worker.parent import mp_launcher

    from tests.support import Harness
    names = ["RUNPOD_AI_API_KEY", "WORKER_API_TOKEN"]
    monkeypatch.setenv("RUNPOD_AI_API_KEY", "secret-key")
    monkeypatch.setenv("WORKER_API_TOKEN", "secret-token")
    assert not mp_launcher.live_children()
    mp_launcher.stop_template()        # a forkserver started earlier keeps its environment
    h = Harness("edges.py", api_token="secret-token")
    try:
        seen = h.run({"do": "environ", "names": names + ["PATH"]}).output
        assert seen == {"proc": ["PATH"], "os": ["PATH"], "api_token": ""}
    finally:
        h.close()
    h = Harness("edges.py", child_env_pass=("RUNPOD_AI_API_KEY",))
    try:
        seen = h.run({"do": "environ", "names": names}).output
        assert seen == {"proc": [], "os": ["RUNPOD_AI_API_KEY"], "api_token": ""}
    finally:
        h.close()
        mp_launcher.stop_template()
    assert os.environ["RUNPOD_AI_API_KEY"] == "secret-key"     # the parent keeps its own


def test_if_the_loop_itself_fails_its_jobs_fail_the_child_goes_and_on_fatal_is_called():
    """The clock is the loop's one injected dependency; one that breaks mid-job makes the
    loop fail outside every per-event guard."""
    import threading
    import time as _time

    from tests.support import FAST, HANDLERS, Collector, gone
    from worker.config import Settings
    from worker.parent.supervisor import Supervisor
    from worker.targets import ScriptTarget
    broken = threading.Event()

    def clock():
        if broken.is_set():
            raise RuntimeError("the clock broke")
        return _time.monotonic()

    fatal = []
    sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "edges.py"), []),
                     clock=clock, on_fatal=fatal.append).start()
    listener = Collector()
    sup.submit({"id": "running", "input": {"do": "sleep", "seconds": 30}}, listener)
    assert sup.wait_until(lambda s: "running" in s.running, 30)
    pid = sup.child_pid
    broken.set()
    sup.cancel("nothing-to-cancel")          # wakes the loop: it reads the clock and fails
    assert sup.join(30)
    result = listener.wait(["running"])["running"]
    assert result.state is JobState.FAILED and "supervisor failed" in message(result)
    assert fatal and "the clock broke" in fatal[0]
    assert sup.state.value == "broken" and "the clock broke" in sup.failure_message
    assert gone(pid)
    broken.clear()
    late = Collector()
    sup.submit({"id": "late", "input": {}}, late)
    assert late.wait(["late"])["late"].reason is Reason.REFUSED


@pytest.mark.parametrize("kind", ["Message", "Exited"])
def test_a_fault_in_the_core_on_a_real_childs_event_fails_that_job_and_the_worker_goes_on(
        harness, kind):
    """The loop's guard with a real child: the core raises on the child's next message
    (a heartbeat or the result) or on its exit; the job in it fails once, the slot is not
    left waiting for a child that is gone, and the next job runs on a fresh child."""
    from types import SimpleNamespace

    from tests.support import gone
    from tests.test_core_guard import arm
    from worker.parent import events as E
    h = harness("edges.py")
    first = h.run({"do": "echo", "echo": 1}).output["pid"]
    job = "victim"
    h.sup.submit({"id": job, "input": {"do": "sleep", "seconds": 2} if kind == "Message"
                  else {"do": "segfault", "after": 0.5}}, h.listener)
    assert h.sup.wait_until(lambda s: job in s.running, 30)
    arm(SimpleNamespace(core=h.sup.core), getattr(E, kind), "before")
    result = h.listener.wait([job])[job]
    assert result.state is JobState.FAILED and "Injected" in message(result)
    after = h.run({"do": "echo", "echo": 2})
    assert after.state is JobState.COMPLETED and after.output["pid"] != first
    assert h.listener.counts[job] == 1
    assert gone(first)
