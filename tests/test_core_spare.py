"""A spare child per slot (parent/spares.py), decided by the core: built beside a ready
active child, promoted when the active one must go and holds no job, waited for rather
than starting a third child, dropped on a cold refresh, never taking the slot out when it
fails. Driven through the loop's dispatcher on a fake clock (test_core.Driver)."""
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.test_core import STEPS, Driver
from worker import protocol as P
from worker.jobs import JobState, Reason
from worker.parent import events as E
from worker.parent.child import Phase
from worker.parent.status import ChildState
from worker.parent.status import WorkerState
from worker.protocol import HandlerMode, Kind


def spare(d, slot=0):
    """The slot: its spare (`.spare`), retiring children and spare policy (`.spares`)."""
    return d.core.slots[slot]


def spare_ready(d, slot=0):
    s = spare(d, slot)
    d.feed(E.Message(slot, s.spare.cid, P.Ready(Kind.SYNC, HandlerMode.INLINE, 1, {}, [])))


def exit_cid(d, cid, code, slot=0):
    d.gone.add(cid)
    d.feed(E.Exited(slot, cid, code, []))


def runs_on(d, job_id):
    """The child number the last Run of `job_id` went to."""
    return [cid for (cid, m) in d.sent_cids if isinstance(m, P.Run)
            and m.job["id"] == job_id][-1]


def driver(**kw):
    return Driver(spare="on", **{"heartbeat_timeout": 1000.0, **kw})


def test_a_spare_is_built_after_the_first_child_is_ready_and_a_refresh_swaps_at_once():
    d = driver()
    assert [s.cause for s in d.spawned] == ["first"]
    d.ready()
    assert [s.cause for s in d.spawned] == ["first", "spare"]
    assert d.core.slots[0].spare.state is ChildState.STARTING
    spare_ready(d)
    first, second = d.cid(), spare(d).spare.cid
    d.submit("a")
    assert runs_on(d, "a") == first
    d.submit("b")                                   # queued behind "a"
    d.done("a", refresh=True)                       # the old child must go: swap now
    assert d.cid() == second and runs_on(d, "b") == second
    assert spare(d).spares.promotions == 1 and [c.cid for c in spare(d).retiring] == [first]
    assert "refresh" in d.stops()[-1]               # the old one was told to stop
    spawns = len(d.spawned)
    exit_cid(d, first, 0)                           # it goes; then a new spare is built
    assert spare(d).retiring == [] and len(d.spawned) == spawns + 1
    assert d.spawned[-1].cause == "spare"
    d.done("b")
    assert d.result("a").state is d.result("b").state is JobState.COMPLETED
    view = d.core.status().children[0].to_dict()["spare"]
    assert view["promotions"] == 1 and view["state"] == "starting"


def test_a_crash_with_a_ready_spare_runs_the_next_job_on_it_without_a_new_start():
    d = driver(job_max_crashes=1)
    d.ready()
    spare_ready(d)
    second = spare(d).spare.cid
    d.submit("boom")
    d.submit("next")
    spawns = len(d.spawned)
    d.exit(-11)
    assert d.result("boom").state is JobState.FAILED
    assert d.cid() == second and runs_on(d, "next") == second
    assert len(d.spawned) == spawns + 1 and d.spawned[-1].cause == "spare"   # the next spare
    assert not any(s.cid > second and s.cause != "spare" for s in d.spawned)


def test_a_refresh_while_the_spare_sets_up_waits_for_it_rather_than_a_third_child():
    d = driver()
    d.ready()                                       # the spare is starting
    d.submit("a")
    d.submit("b")
    d.done("a", refresh=True)                       # no spare ready: the old child stops
    first = d.cid()
    d.exit(0)
    assert d.core.slots[0].child is None
    settles = len(d.settles)
    d.at(d.now + 1)
    assert len(d.settles) == settles                # no third child is started
    spare_ready(d)                                  # it takes over; "b" runs on it
    assert d.cid() != first and runs_on(d, "b") == d.cid()
    assert spare(d).spares.unspared == 1


def test_a_cold_refresh_drops_the_spare_and_starts_a_new_child():
    d = driver()
    d.ready()
    spare_ready(d)
    old_spare = spare(d).spare.cid
    d.submit("writes")
    d.done("writes", refresh="cold")
    assert spare(d).spare.state is ChildState.STOPPING     # dropped, not promoted
    assert spare(d).spares.promotions == 0
    exit_cid(d, old_spare, 0)
    d.exit(0)                                       # the old active child
    assert d.spawned[-1].cause == "refresh_cold"    # a new child, started after the job


def test_spares_that_keep_failing_turn_off_and_the_slot_serves_on():
    d = driver()
    d.ready()
    for _ in range(3):
        exit_cid(d, spare(d).spare.cid, 1)          # dies in set-up
        d.at(d.now + 4.5)                           # past its backoff (1, 2, 4 s)
    assert spare(d).spares.off is not None and "3 spares in a row" in spare(d).spares.off
    assert d.core.state is WorkerState.RUNNING and d.core.slots[0].out is None
    d.submit("a")
    d.done("a")
    assert d.result("a").state is JobState.COMPLETED
    assert d.core.status().children[0].to_dict()["spare"]["off"] == spare(d).spares.off


def test_an_old_spare_is_replaced_and_shutdown_stops_spares_too():
    d = driver(spare_max_age=5.0)
    d.ready()
    spare_ready(d)
    first_spare = spare(d).spare.cid
    d.at(d.now + 5)
    assert spare(d).spare.state is ChildState.STOPPING
    exit_cid(d, first_spare, 0)                     # a newer one at once, no failure
    assert spare(d).spare.cid != first_spare and spare(d).spares.failures == 0
    d.stop(0.0)
    d.at(d.now + 0.1)
    assert spare(d).spare.state is ChildState.STOPPING
    exit_cid(d, spare(d).spare.cid, 0)
    d.exit(0)
    assert d.core.finished


def test_jobs_end_once_with_spares_through_timeouts_and_cancels():
    d = driver()
    d.ready()
    spare_ready(d)
    d.submit("slow", policy={"executionTimeout": 1000})
    d.submit("after")
    first = d.cid()
    d.at(d.now + 1.0)                               # inline timeout: the child must go
    assert d.result("slow").reason is Reason.TIMED_OUT
    assert d.cid() != first and runs_on(d, "after") == d.cid()
    d.done("after")
    assert len(d.results["slow"]) == len(d.results["after"]) == 1


SPARE_STEPS = (
    st.tuples(st.just("spare_ready")),
    st.tuples(st.just("spare_exit"), st.sampled_from([0, 1, -9])),
    st.tuples(st.just("retired_exit"), st.sampled_from([0, -9])),
    st.tuples(st.just("app_xid"), st.sampled_from([13, 43])),
    st.tuples(st.just("spare_checked"), st.booleans()),
)


def play(d, ev):
    s = spare(d)
    if ev[0] == "spare_ready":
        if s.spare is not None and s.spare.phase is Phase.SETTING_UP:
            spare_ready(d)
    elif ev[0] == "spare_exit":
        if s.spare is not None and not s.spare.phase.unborn:
            exit_cid(d, s.spare.cid, ev[1])
    elif ev[0] == "retired_exit":
        for child in list(s.retiring):
            exit_cid(d, child.cid, ev[1])
    elif ev[0] == "app_xid":
        d.gpu_event(ev[1])
    elif ev[0] == "spare_checked":
        if s.spare is not None and s.spare.gpu_checking:
            if ev[1]:
                d.passed.add(s.spare.cid)
            checked(d, ev[1])
    else:
        return d.play(ev)
    return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(*STEPS, *SPARE_STEPS), max_size=40))
def test_with_a_spare_every_job_ends_once_on_one_live_child_and_never_three(events):
    d = driver(restart_limit=4, job_max_crashes=2, heartbeat_timeout=10.0)
    d.passed = set()                            # spares whose GPU check passed
    submitted = set()
    for ev in events:
        submitted.add(play(d, ev))
        slot = d.core.slots[0]
        s = slot.spare
        if slot.child is not None and slot.in_flight:
            assert slot.child.state in (ChildState.BUSY, ChildState.STOPPING)
        assert s is None or s is not slot.child
        assert not slot.in_flight or slot.child is not None
        # No orphan: every process started and not gone, not killed and not still on
        # its way (Spawned not yet fed) is a child some role of the slot holds.
        on_the_way = {e.cid for e in d.later if isinstance(e, E.Spawned)}
        orphans = [a.cid for a in d.spawned if a.cid not in d.gone and a.cid not in d.killed
                   and a.cid not in on_the_way and slot.owns(a.cid) is None]
        assert orphans == []
        assert len([c for c in slot.children() if not c.stopping]) <= 2
        asked = {c for c, m in d.sent_cids if isinstance(m, P.Check)}
        assert slot.child is None or slot.child.cid not in asked - d.passed, \
            "a spare took over before it passed its GPU check"
    d.wind_down()
    submitted.discard(None)
    assert set(d.results) == submitted
    assert all(len(rs) == 1 for rs in d.results.values()), d.results


def test_a_gpu_that_is_not_healthy_stops_the_spare_with_the_active_child():
    d = driver()
    d.ready()
    spare_ready(d)
    d.gpu_event(79)                                 # fallen off the bus: unhealthy
    assert d.core.state is WorkerState.BROKEN
    assert spare(d).spare.state is ChildState.STOPPING
    assert d.core.slots[0].child.state is ChildState.STOPPING
    exit_cid(d, spare(d).spare.cid, -9)
    d.exit(-9)
    assert not spare(d).busy_beside and d.core.slots[0].child is None     # and none rebuilt


def test_a_spare_on_the_same_gpu_is_not_counted_as_the_active_childs_growth():
    """The device's memory in use grows by the spare's; only the active child's own
    reservation counts against WORKER_MAX_VRAM while a spare exists (as with two
    children sharing a GPU)."""
    from worker.parent.monitor import DeviceReading, Reading
    d = driver(max_vram="1000", devices=[("GPU-a",)])
    d.ready()
    spare_ready(d)
    reading = Reading("nvml", devices=[DeviceReading(0, "GPU-a", "GPU", 16000, 9000, 7000)])
    d.reading = reading                             # 9 GB in use: mostly the spare's
    d.submit("a")
    d.done("a")
    assert d.stops() == [] and spare(d).spares.promotions == 0


def checked(d, ok, slot=0):
    s = spare(d, slot)
    d.feed(E.Message(slot, s.spare.cid, P.Checked(ok, "1 GPU(s) passed the CUDA check" if ok
                                                  else "cuMemAlloc_v2 failed: CUDA error 999")))


def test_after_an_application_xid_the_spare_takes_over_only_once_its_gpu_check_passed():
    d = driver()
    d.ready()
    spare_ready(d)
    first, second = d.cid(), spare(d).spare.cid
    d.submit("a")
    d.gpu_event(13)                      # NVML names no process: the spare may be poisoned
    assert [m.why for c, m in d.sent_cids if isinstance(m, P.Check) and c == second] \
        == ["Xid 13"]
    assert not spare(d).spare_ready and d.core.status().children[0].spare["gpu_check"] == "after Xid 13"
    d.submit("b")
    d.done("a")                          # the active child must go: the spare is not cleared
    d.exit(0)
    settles = len(d.settles)
    d.at(d.now + 1)
    assert d.core.slots[0].child is None and len(d.settles) == settles   # it waits
    assert runs_on(d, "a") == first and not any(isinstance(m, P.Run) and m.job["id"] == "b"
                                                 for m in d.sent)
    checked(d, True)
    assert d.cid() == second and runs_on(d, "b") == second
    d.done("b")
    assert d.result("b").state is JobState.COMPLETED and spare(d).spares.promotions == 1


def test_a_spare_that_fails_its_gpu_check_is_dropped_and_the_slot_starts_a_fresh_child():
    d = driver()
    d.ready()
    spare_ready(d)
    second = spare(d).spare.cid
    d.submit("a")
    d.gpu_event(43)
    d.done("a")
    d.exit(0)
    d.submit("b")
    checked(d, False)
    assert spare(d).spare.state is ChildState.STOPPING and spare(d).spares.promotions == 0
    exit_cid(d, second, -15)
    assert spare(d).spares.failures == 1 and spare(d).spares.retry_at is not None and spare(d).spares.off is None
    assert d.core.slots[0].starting is not None or d.core.slots[0].child is not None
    d.ready()                            # a cold child, not the poisoned spare
    assert runs_on(d, "b") == d.cid() and d.cid() != second
    d.done("b")
    assert d.result("b").state is JobState.COMPLETED


def test_an_xid_while_the_spare_sets_up_checks_it_once_it_is_ready():
    d = driver()
    d.ready()                            # the spare is starting
    d.gpu_event(13)
    assert not any(isinstance(m, P.Check) for m in d.sent)
    spare_ready(d)
    assert [m for m in d.sent if isinstance(m, P.Check)] and not spare(d).spare_ready
    checked(d, True)
    assert spare(d).spare_ready and d.core.status().children[0].spare["gpu_check"] is None


def test_a_spare_short_of_gpu_memory_just_after_a_child_left_is_asked_again_soon():
    """The driver frees a dead process's memory a moment late: a fit check that fails on
    GPU memory within the settle bound after the retired child exited is tried again
    every SOON_S, silently; later, it is said once and asked again every 30 s."""
    from worker.parent import device_settle, spares
    d = driver()
    d.ready()
    spare_ready(d)
    first = d.cid()
    d.submit("a")
    d.done("a", refresh=True)                      # swap: the first child retires
    d.fail_spawn, d.transient = True, True
    d.spawn_error = "GPU memory: the active child's peak is 9,000 MiB, 2,000 MiB are free"
    d.short_of_gpu = True
    exit_cid(d, first, 0)
    s = spare(d).spares
    assert s.unfit is None and s.retry_at == d.now + spares.SOON_S
    d.at(d.now + device_settle.BOUND_S + 0.1)      # still short past the bound: said
    assert s.unfit is not None and s.retry_at == d.now + spares.UNFIT_RETRY_S
    d.fail_spawn = False
    d.at(s.retry_at)
    assert spare(d).spare is not None and spare(d).spares.unfit is None


def test_an_exit_whose_last_words_swap_in_the_spare_ends_the_child_that_exited():
    """The child's last messages (an unreadable chunk of its inline job) stop it and swap
    in the ready spare; the exit that comes with them is the old child's, not the
    spare's: the spare serves on, nothing retires, no third child is started."""
    d = driver()
    d.ready()                                    # inline
    spare_ready(d)
    first, second = d.cid(), spare(d).spare.cid
    d.submit("a")
    settles = len(d.settles)
    d.exit(-9, messages=[P.Garbled("chunk", d.run_of("a"), "ValueError: bad")])
    assert d.child.cid == second and d.child.stop_cause is None and spare(d).retiring == []
    assert len(d.settles) == settles and d.result("a").error_info()["error_type"] \
        == "ChunkUnreadable"
    assert first in d.gone and second not in d.killed


def test_a_spare_lost_after_its_failed_gpu_check_leaves_nothing_to_the_next_one():
    """What a spare went through is its own: the next spare after one that failed its GPU
    check and was lost (no exit after SIGKILL) is not checked again for that Xid, and
    takes over when it is needed."""
    d = driver()
    d.ready()
    spare_ready(d)
    d.gpu_event(13)
    checked(d, False)                           # the check failed: stopped as a failure
    lost = spare(d).spare.cid
    for _ in range(4):                          # Stop, SIGTERM, SIGKILL, then lost
        d.at(d.now + 6.0)
    assert spare(d).spare is None or spare(d).spare.cid != lost
    if spare(d).spare is None:
        d.at(d.now + 60.0)                      # a new spare once any backoff is over
    checks = len([m for m in d.sent if isinstance(m, P.Check)])
    spare_ready(d)
    assert len([m for m in d.sent if isinstance(m, P.Check)]) == checks
    assert spare(d).spare_ready
    d.refresh()
    assert d.core.slots[0].spares.promotions == 1


def test_a_spare_that_dies_is_reported_with_its_own_reason_not_an_earlier_ones():
    """A spare that failed its set-up with a message, then two that died without one: the
    slot turns spares off naming the last one's death, not the first one's message."""
    d = driver()
    d.ready()
    s = spare(d)
    d.feed(E.Message(0, s.spare.cid, P.SetupFailed("boom at import", "Traceback ...")))
    exit_cid(d, s.spare.cid, 1)
    for _ in range(2):
        d.at(s.spares.retry_at)
        exit_cid(d, s.spare.cid, -9)            # dies in set-up, saying nothing
    assert s.spares.off is not None and "boom" not in s.spares.off
    assert "killed by SIGKILL" in s.spares.off
