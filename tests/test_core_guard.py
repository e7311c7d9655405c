"""The guard around the core (dispatch.py, core.recover): an exception while handling any
event, at any point, fails what that event concerns — its job, the child it was about —
and nothing else is lost; the core goes on. Faults are injected into the core itself
(one handler, the step, an effect), driven through the loop's dispatcher on a fake clock.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import protocol as P
from worker.jobs import JobState, Reason
from worker.parent import events as E
from worker.parent.status import ChildState
from worker.parent.monitor import Reading
from worker.parent.status import WorkerState
from worker.protocol import HandlerMode

from .test_core import STEPS, Driver


class Injected(RuntimeError):
    pass


def arm(d, kind, where="before"):
    """One exception in the core's handling of the next `kind` event (None: of any kind):
    before its handler changes anything, after it has done its part, or in the step that
    follows."""
    core = d.core
    table = type(core)._ON
    if kind is None:
        for each in table:
            arm_one(core, table, each, where)
        return
    arm_one(core, table, kind, where)


def arm_one(core, table, kind, where):
    armed = core.__dict__.get("_ON", table)
    if where == "step":
        original_dispatch = core._dispatch

        def faulty_dispatch(now):
            del core._dispatch           # one shot
            original_dispatch(now)
            raise Injected("in the step")

        def step_next(self, ev, now):
            del core._ON
            table[kind](self, ev, now)
            core._dispatch = faulty_dispatch
        core._ON = {**armed, kind: step_next}
        return

    def faulty(self, ev, now):
        del core._ON                     # one shot: the class's table again
        if where == "after":
            table[kind](self, ev, now)
        raise Injected(f"{where} {kind.__name__}")
    core._ON = {**armed, kind: faulty}


def running(d, job_id, **ready):
    """A ready child (with `ready`'s settings) running `job_id`."""
    if d.child is None or d.child.state is ChildState.STARTING:
        d.ready(**ready)
    d.submit(job_id)
    assert job_id in [t.id for t in d.core.in_flight.values()]


# Each: set up, arm, feed the event; returns the job it concerns (None: no job).
def on_submit(d, where):
    d.ready()
    arm(d, E.Submit, where)
    d.submit("it")
    return "it"


def on_cancel(d, where):
    running(d, "it")
    arm(d, E.Cancel, where)
    d.cancel("it")
    return "it"


def worker_wide(kind, feed):
    def scenario(d, where):
        running(d, "it")
        arm(d, kind, where)
        feed(d)
        return "it"
    return scenario


def on_message(d, where):
    running(d, "it")
    arm(d, E.Message, where)
    d.done("it")
    return "it"


def on_exited(d, where):
    running(d, "it")
    arm(d, E.Exited, where)
    d.exit(-9)
    return "it"


def replacing(d):
    """Its child is replaced (a refresh): the successor's start waits in `d.later`."""
    d.ready()
    d.refresh()                # idle: stopped at once
    d.hold = True
    d.exit(0)
    d.submit("queued")
    assert isinstance(d.later[0], E.Settled)


def on_settled(d, where):
    replacing(d)
    arm(d, E.Settled, where)
    d.deliver()
    return None


def at_the_launchers_answer(kind, launcher_fails=False):
    """The replacement's Settled is delivered, the Spawn carried out, and its answer
    (Spawned, or SpawnFailed when the launcher fails) is the event that faults."""
    def scenario(d, where):
        replacing(d)
        d.fail_spawn = launcher_fails
        d.deliver(1)
        d.fail_spawn = False
        assert isinstance(d.later[0], kind)
        arm(d, kind, where)
        d.deliver()
        return None
    return scenario


on_spawned = at_the_launchers_answer(E.Spawned)
on_spawn_failed = at_the_launchers_answer(E.SpawnFailed, launcher_fails=True)


def on_memory_read(d, where):
    d.reading = Reading("host", child_rss_mb=50)
    running(d, "first", config={"max_rss_mb": 100})
    d.hold = True
    d.done("first")             # idle: its memory is read before the next job
    d.submit("queued")
    assert isinstance(d.later[0], E.MemoryRead)
    arm(d, E.MemoryRead, where)
    d.deliver()
    return None


SCENARIOS = {
    E.Submit: on_submit, E.Cancel: on_cancel, E.Message: on_message, E.Exited: on_exited,
    E.Refresh: worker_wide(E.Refresh, lambda d: d.refresh()),
    E.Stop: worker_wide(E.Stop, lambda d: d.stop(5.0)),
    E.GpuEvent: worker_wide(E.GpuEvent, lambda d: d.gpu_event(43)),
    E.Tick: worker_wide(E.Tick, lambda d: d.at(d.now + 1)),
    E.Resumed: worker_wide(E.Resumed, lambda d: d.feed(E.Resumed(2.0))),
    E.Settled: on_settled, E.Spawned: on_spawned, E.SpawnFailed: on_spawn_failed,
    E.MemoryRead: on_memory_read,
}


def test_every_event_type_has_a_fault_scenario():
    """The loop's last words (LoopFailed, LoopEnded) are fed outside the guard: their
    own test is test_the_loops_last_words_fail_every_job_even_when_the_core_cannot."""
    assert set(SCENARIOS) == set(E.ALL) - {E.LoopFailed, E.LoopEnded}


def settle_down(d):
    """Let every stopping child exit and every new one become ready."""
    d.hold = False
    d.deliver()
    for _ in range(6):
        slot = d.core.slots[0]
        if slot.child is not None and slot.child.state is ChildState.STOPPING:
            d.at(d.now + 5)
            d.exit(-9)
        elif slot.child is not None and slot.child.state is ChildState.STARTING:
            d.ready()
        else:
            return


@pytest.mark.parametrize("where", ["before", "after", "step"])
@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.__name__)
def test_an_exception_on_any_event_fails_its_job_once_and_the_core_goes_on(kind, where):
    d = Driver()
    job = SCENARIOS[kind](d, where)
    if job is not None:
        (result,) = d.results[job]                    # exactly one final record
        if where == "before" or kind is E.Submit:     # the event did not finish its part
            assert result.state is JobState.FAILED
            assert "Injected" in result.error_info()["error_message"]
    settle_down(d)
    if kind is E.Stop:                                # a stop is never lost, even to a fault
        assert d.core.finished
        d.submit("late")
        assert d.result("late").reason is Reason.REFUSED
        return
    if kind is E.SpawnFailed and where != "before":   # it had its effect: one child, none
        assert d.core.state is WorkerState.SETUP_FAILED
        assert d.result("queued").reason is Reason.REFUSED
        return
    assert d.core.state is WorkerState.RUNNING
    if "queued" in d.core.jobs.active:                # waited through the fault: it runs
        d.done("queued")
        assert d.result("queued").state is JobState.COMPLETED
    d.submit("after")
    d.done("after")
    assert d.result("after").state is JobState.COMPLETED
    assert all(len(rs) == 1 for rs in d.results.values()), d.results


def test_a_fault_in_one_childs_event_leaves_the_other_childs_job_alone():
    d = Driver(devices=[("GPU-a",), ("GPU-b",)])
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("a")
    d.submit("b")
    arm(d, E.Message, "before")
    d.done("a")
    assert d.result("a").state is JobState.FAILED
    assert "b" not in d.results
    d.done("b")
    assert d.result("b").state is JobState.COMPLETED


def test_a_fault_in_an_effect_is_recovered_and_the_other_actions_still_run():
    d = Driver()
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    d.submit("a")
    d.fail_send = 1                 # the next Send raises in the loop's part
    d.submit("b")                   # its Run's Send raises; its Started still goes out
    assert ("start", "b") in d.events
    assert d.result("a").state is JobState.FAILED and d.result("b").state is JobState.FAILED
    settle_down(d)
    d.submit("after")
    d.done("after")
    assert d.result("after").state is JobState.COMPLETED
    assert all(len(rs) == 1 for rs in d.results.values())


# --- random faults in random sequences -----------------------------------------------------

EVENTS = st.lists(st.one_of(
    *STEPS,
    st.tuples(st.just("deliver"), st.integers(0, 3)),     # outcome events held back
    st.tuples(st.just("fault"), st.one_of(st.none(), st.none(), st.none(),
                                          st.sampled_from(list(SCENARIOS))),
              st.sampled_from(["before", "after", "step"])),
), max_size=40)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_faults_anywhere_lose_no_job_and_send_nothing_to_a_child_not_held(events):
    d = Driver(hold=True, restart_limit=4, job_max_crashes=2)
    submitted = set()
    for ev in events:
        if ev[0] == "fault":
            arm(d, ev[1], ev[2])
        else:
            submitted.add(d.play(ev))
    submitted.discard(None)
    d.core.__dict__.pop("_ON", None)       # an armed fault that never fired
    d.core.__dict__.pop("_dispatch", None)
    d.wind_down()
    assert set(d.results) == submitted
    assert all(len(rs) == 1 for rs in d.results.values()), d.results
    assert not d.core.jobs.active


def test_a_late_exit_or_message_of_a_child_given_up_on_changes_nothing():
    d = Driver(job_max_crashes=2)
    d.ready()
    old = d.cid()
    d.submit("a")
    d.exit(-9)                                      # a: its child crashed; run again alone
    d.ready()
    d.feed(E.Exited(0, old, -9, []))                # the old child's exit, again
    d.feed(E.Message(0, old, P.Done(d.run_of("a"), JobState.COMPLETED, Reason.COMPLETED,
                                    {"output": "forged"}, False, 1)))
    assert "a" not in d.results and d.child.state is ChildState.BUSY
    d.done("a")
    assert d.result("a").output == "a"


def test_a_spare_whose_exit_faults_counts_as_a_failed_spare_and_backs_off():
    """A spare whose exit the core cannot handle is let go of as a failed spare: the next
    one waits for the backoff, never rebuilt in a tight loop. (The fault also replaces the
    slot's active child: the guard replaces what the event reached.)"""
    from .test_core_spare import driver, exit_cid, spare, spare_ready
    d = driver()
    d.ready()
    spare_ready(d)
    arm(d, E.Exited, "before")
    exit_cid(d, spare(d).spare.cid, -9)
    policy = spare(d).spares
    assert spare(d).spare is None and policy.failures == 1 and policy.retry_at is not None
    d.exit(0)                                    # the replaced active child goes
    d.ready()
    spares = [s for s in d.spawned if s.cause == "spare"]
    d.at(policy.retry_at - 0.01)
    assert [s for s in d.spawned if s.cause == "spare"] == spares    # not before its time
    d.at(policy.retry_at)
    assert len([s for s in d.spawned if s.cause == "spare"]) == len(spares) + 1


def test_a_crash_whose_blame_faults_counts_no_replacement_without_a_spare(monkeypatch):
    """The replacement is counted once the crashed child's jobs are dealt with: a fault
    while blaming them leaves the count as it was (as before the child's state moved)."""
    from worker.parent import blame
    from .test_core_spare import driver, spare
    d = driver()
    d.ready()                                   # a spare is asked, not yet ready
    d.submit("a")

    def fault(*args, **kwargs):
        raise Injected("in after_crash")
    monkeypatch.setattr(blame, "after_crash", fault)
    d.exit(-9)
    assert d.result("a").state is JobState.FAILED
    assert spare(d).spares.unspared == 0
