"""The core with several children (slots), without processes: where jobs go, what an
event in one child does to the others, setup failures and the worker's state, and random
sequences over two and three children."""
import signal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import protocol as P
from worker.jobs import JobState, Reason
from worker.parent import actions as A
from worker.parent.status import ChildState
from worker.parent.status import WorkerState
from worker.protocol import HandlerMode, Kind

from .test_core import Driver


def two(**kw):
    d = Driver(devices=[("GPU-a",), ("GPU-b",)], **kw)
    return d


def slots_of(d, *job_ids):
    return [d.slot_of(j) for j in job_ids]


def test_each_child_starts_with_its_own_gpus_and_checks():
    d = two()
    assert [(a.slot, a.env["CUDA_VISIBLE_DEVICES"], a.checks) for a in d.spawned] == \
        [(0, "GPU-a", True), (1, "GPU-b", True)]
    assert [a.env["WORKER_CHILD_INDEX"] for a in d.spawned] == ["0", "1"]
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("a", input={"refresh": 1})
    d.done("a", refresh=True)
    d.exit(0, slot=d.slot_of("a"))
    again = d.spawned[-1]
    assert again.slot == d.slot_of("a") and again.checks is False    # checks once per slot


def test_jobs_go_to_whichever_child_is_free():
    d = two()
    d.submit("early")                 # no child ready: it waits
    assert d.runs() == []
    d.ready(slot=1)
    assert slots_of(d, "early") == [1]
    d.ready(slot=0)
    d.submit("b")
    d.submit("c")                     # both busy: queued
    assert slots_of(d, "b") == [0] and d.runs() == ["early", "b"]
    d.done("early")
    assert slots_of(d, "c") == [1]
    assert d.core.status().capacity == 2 and d.core.status().concurrency == 2


def test_the_least_loaded_child_gets_the_job():
    d = two()
    d.ready(slot=0, kind=Kind.ASYNC, mode=HandlerMode.TASKS, concurrency=4)
    d.ready(slot=1, kind=Kind.ASYNC, mode=HandlerMode.TASKS, concurrency=4)
    for i in range(6):
        d.submit(f"j{i}")
    assert sorted(slots_of(d, *[f"j{i}" for i in range(6)])) == [0, 0, 0, 1, 1, 1]
    assert d.core.status().capacity == 8


def test_a_crash_in_one_child_touches_only_its_jobs():
    d = two()
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("a")
    d.submit("b")
    d.exit(-9, slot=d.slot_of("b"))
    assert d.result("b").reason is Reason.WORKER_LOST
    assert "a" not in d.results and d.core.slots[d.slot_of("a")].child.state is ChildState.BUSY
    assert d.core.slots[1].child.state is ChildState.STARTING      # respawned in its slot
    assert len(d.core.slots[1].breaker.deaths) == 1 and not d.core.slots[0].breaker.deaths
    d.done("a")
    assert d.result("a").state is JobState.COMPLETED


def test_a_timeout_stops_only_its_child():
    d = two()
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("slow", policy={"executionTimeout": 1000})
    d.submit("fine")
    d.at(1.5)
    assert d.result("slow").state is JobState.TIMED_OUT
    stopped = [i for i, m in d.sent_to if isinstance(m, P.Stop)]
    assert stopped == [d.slot_of("slow")] and (signal.SIGUSR1, False) in d.signals
    assert d.core.slots[d.slot_of("fine")].child.stop_cause is None


def test_cancel_goes_to_the_child_that_runs_the_job():
    d = two()
    d.ready(slot=0, kind=Kind.ASYNC, mode=HandlerMode.TASKS, concurrency=2)
    d.ready(slot=1, kind=Kind.ASYNC, mode=HandlerMode.TASKS, concurrency=2)
    d.submit("a")
    d.submit("b")
    d.cancel("b")
    assert [(i, m.run) for i, m in d.sent_to if isinstance(m, P.Cancel)] == \
        [(d.slot_of("b"), d.run_of("b"))]
    assert d.result("b").state is JobState.CANCELLED and "a" not in d.results


def test_refresh_waits_for_each_child_to_be_idle():
    d = two()
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("a")
    d.refresh()
    stopped = [i for i, m in d.sent_to if isinstance(m, P.Stop)]
    assert stopped == [1 - d.slot_of("a")]        # the idle one at once
    d.done("a")
    assert sorted(i for i, m in d.sent_to if isinstance(m, P.Stop)) == [0, 1]


def test_a_slot_that_keeps_failing_setup_is_taken_out_and_the_worker_goes_on():
    d = two(restart_limit=3)
    d.ready(slot=0)
    for _ in range(3):
        d.msg(P.SetupFailed("boom", "Traceback ..."), slot=1)
        d.exit(1, slot=1)
    status = d.core.status()
    assert status.state is WorkerState.RUNNING and status.degraded and status.ready
    assert "boom" in status.children[1].out and d.core.slots[1].child is None
    assert len(d.spawned) == 4              # 0 once, 1 three times, then no more
    d.submit("x")
    assert slots_of(d, "x") == [0]
    assert status.to_dict()["children"][1]["state"] == "out"


def test_a_slot_out_before_any_child_was_ready_gets_one_more_chance():
    d = two(restart_limit=3)
    d.msg(P.SetupFailed("flaky", ""), slot=1)
    d.exit(1, slot=1)
    assert d.core.slots[1].out and len(d.spawned) == 2
    d.ready(slot=0)
    assert d.core.slots[1].out is None and d.spawned[-1].slot == 1
    d.ready(slot=1)
    assert not d.core.status().degraded


def test_every_slot_failing_setup_fails_the_worker_and_its_jobs():
    d = two()
    d.submit("waiting")
    for slot in (0, 1):
        d.msg(P.SetupFailed("ImportError: no module", "Traceback ..."), slot=slot)
        d.exit(1, slot=slot)
    assert d.core.state is WorkerState.SETUP_FAILED
    assert d.result("waiting").reason is Reason.REFUSED
    assert "ImportError" in d.core.failure_message


def test_a_restart_storm_in_one_slot_leaves_the_other():
    d = two(restart_limit=2)
    d.ready(slot=0)
    for _ in range(2):
        d.ready(slot=1)
        d.exit(-11, slot=1)
    status = d.core.status()
    assert status.state is WorkerState.RUNNING and "not respawning" in status.children[1].out
    d.ready(slot=0) if d.core.slots[0].child.state is ChildState.STARTING else None
    d.submit("x")
    assert slots_of(d, "x") == [0]


def test_shutdown_stops_every_child_and_finishes_when_all_are_gone():
    d = two()
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("a")
    d.stop(10.0)
    idle = 1 - d.slot_of("a")
    assert [i for i, m in d.sent_to if isinstance(m, P.Stop)] == [idle]
    d.exit(0, slot=idle)
    assert not d.core.finished
    d.done("a")
    d.exit(0, slot=d.slot_of("a"))
    assert d.core.finished and d.result("a").state is JobState.COMPLETED


def test_warm_refused_by_every_child_restarts_the_forkserver_once_all_are_gone():
    d = two()
    d.msg(P.WarmRefused("it started a thread"), slot=0)
    d.exit(0, slot=0)
    assert sum(isinstance(a, A.Spawn) for a in d.spawned) == 2    # no spawn yet
    d.msg(P.WarmRefused("it started a thread"), slot=1)
    d.exit(0, slot=1)
    assert [a.slot for a in d.spawned[2:]] == [0, 1]
    assert d.warm_offs == ["it started a thread"]          # said once, for both
    assert d.core.state is WorkerState.RUNNING


def test_a_shared_gpu_counts_only_the_childs_own_reservation():
    from worker.parent.monitor import DeviceReading, Reading
    d = Driver(devices=[("GPU-a",), ("GPU-a",)], max_vram="100")
    d.reading = Reading("nvml", devices=[DeviceReading(0, "GPU-a", "x", 1000, 900, 100)])
    d.ready(slot=0)
    d.ready(slot=1)
    d.submit("a")
    d.done("a")                         # the device grew 900 MiB: the other child's too
    assert d.core.slots[d.slot_of("a")].child.refresh_reason is None
    d.core.slots[0].child.torch = {"reserved_mb": 150.0}
    d.submit("b")
    d.done("b", slot=0) if d.slot_of("b") == 0 else d.done("b")
    owner = d.core.slots[d.slot_of("b")].child
    assert (owner.refresh_reason is not None) == (d.slot_of("b") == 0)


# --- random sequences over two and three children ----------------------------------

EVENTS = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 5), st.sampled_from([0, 500, 3000])),
    st.tuples(st.just("cancel"), st.integers(0, 8), st.booleans()),
    st.tuples(st.just("ready"), st.integers(0, 2), st.sampled_from(list(HandlerMode)),
              st.integers(1, 3)),
    st.tuples(st.just("done"), st.integers(0, 2), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("exit"), st.integers(0, 2), st.sampled_from([0, 1, -9])),
    st.tuples(st.just("setup_failed"), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.floats(0, 20)),
    st.tuples(st.just("refresh")),
    st.tuples(st.just("stop"), st.floats(0, 5)),
), max_size=50)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), EVENTS)
def test_with_several_children_every_job_ends_once_and_runs_in_one_live_child(n, events):
    d = Driver(devices=[(f"GPU-{i}",) for i in range(n)], restart_limit=3, job_max_crashes=2)
    submitted = set()
    count = 0
    for ev in events:
        kind = ev[0]
        slot = ev[1] % n if kind in ("ready", "done", "exit", "setup_failed") else None
        child = d.core.slots[slot].child if slot is not None else None
        if kind == "submit":
            count += 1
            submitted.add(f"j{count}")
            d.submit(f"j{count}", **({"policy": {"executionTimeout": ev[2]}} if ev[2] else {}))
        elif d.worker_event(ev):
            pass
        elif kind == "ready" and child is not None and child.state is ChildState.STARTING:
            d.ready(kind=Kind.ASYNC if ev[2] is HandlerMode.TASKS else Kind.SYNC, mode=ev[2],
                    concurrency=ev[3], slot=slot)
        elif kind == "done" and child is not None:
            running = [t.id for t in d.core.slots[slot].in_flight.values()]
            if running:
                d.done(running[ev[2] % len(running)], refresh=ev[3],
                       concurrency=child.concurrency, slot=slot)
        elif kind == "exit" and child is not None:
            d.exit(ev[2], slot=slot)
        elif kind == "setup_failed" and child is not None and child.state is ChildState.STARTING:
            d.msg(P.SetupFailed("boom", ""), slot=slot)
            d.exit(1, slot=slot)
        seen = set()
        for s in d.core.slots:
            ids = {t.id for t in s.in_flight.values()}
            assert not ids & seen, "a job in two children"
            seen |= ids
            if s.in_flight:
                assert s.child is not None and s.child.state in (ChildState.BUSY,
                                                                 ChildState.STOPPING)
                assert len(s.in_flight) <= s.child.concurrency
            assert s.out is None or s.child is None or s.child.state is ChildState.STOPPING \
                or d.core.state is not WorkerState.RUNNING
    d.wind_down()
    assert set(d.results) == submitted
    assert all(len(rs) == 1 for rs in d.results.values()), d.results


def test_one_job_at_a_time_goes_round_the_idle_children():
    d = Driver(devices=[("GPU-0",), ("GPU-1",), ("GPU-2",)])
    for slot in range(3):
        d.ready(slot=slot)
    for i in range(6):
        d.submit(f"j{i}")
        d.done(f"j{i}")
    assert slots_of(d, *[f"j{i}" for i in range(6)]) == [0, 1, 2, 0, 1, 2]
