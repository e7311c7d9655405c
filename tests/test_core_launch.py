"""The core's side of a launcher that fails: a start that fails for a moment is retried
with backoff and counted by the breaker, never a setup failure; a child that does not
exit after SIGKILL is declared lost, its slot restarted only if the new child fits.
Driven through the loop's dispatcher on a fake clock (test_core.Driver)."""
import signal

from tests.test_core import Driver
from worker.parent import events as E
from worker.jobs import JobState, Reason
from worker.parent.child import KILL_WAIT_S
from worker.parent.status import WorkerState


def test_a_start_that_fails_for_a_moment_is_retried_with_backoff_not_a_setup_failure():
    d = Driver(restart_limit=5)
    d.ready()
    d.fail_spawn = d.transient = True
    d.refresh()                                   # the child goes; its successor cannot start
    d.exit(0)
    assert d.core.state is WorkerState.RUNNING and d.core.slots[0].start_failures == 1
    d.submit("queued")
    asked = len(d.settles)
    d.at(d.now + 0.99)
    assert len(d.settles) == asked                # 1 s before the first retry
    d.at(d.now + 0.01)
    assert len(d.settles) == asked + 1            # tried again, failed again: 2 s now
    view = d.core.status().children[0]
    assert view.start_error == "OSError: injected" and view.deaths == 2
    d.at(d.now + 1.99)
    assert len(d.settles) == asked + 1
    d.fail_spawn = False
    d.at(d.now + 0.01)
    d.ready()
    d.done("queued")
    assert d.result("queued").state is JobState.COMPLETED
    assert d.core.status().children[0].start_error is None
    assert d.core.slots[0].start_failures == 0


def test_starts_that_keep_failing_trip_the_breaker_and_queued_jobs_end_once():
    d = Driver(restart_limit=3)
    d.ready()
    d.fail_spawn = d.transient = True
    d.refresh()
    d.exit(0)
    d.submit("queued")
    for _ in range(10):
        d.at(d.now + 30)
    assert d.core.state is WorkerState.BROKEN
    assert "could not start" in d.core.failure_message and "RESTART_LIMIT" in \
        d.core.failure_message
    assert len(d.results["queued"]) == 1 and d.result("queued").state is JobState.FAILED
    assert d.core.slots[0].start_failures == 3     # no retry after the breaker tripped


def test_a_child_that_does_not_exit_after_sigkill_is_lost_and_replaced():
    d = Driver()
    d.ready()
    d.submit("stuck", policy={"executionTimeout": 1000})
    d.at(1.0)                                     # timed out: stop, SIGTERM, SIGKILL
    d.at(2.0)
    d.at(3.0)
    assert d.signals[-1] == (signal.SIGKILL, True)
    d.at(3.0 + KILL_WAIT_S - 0.01)
    assert d.child is not None and d.core.slots[0].lost_count == 0
    spawns, old = len(d.spawned), d.child.cid
    d.at(3.0 + KILL_WAIT_S)
    assert d.core.slots[0].lost_count == 1 and len(d.spawned) == spawns + 1
    assert d.settles[-1].need_mb == 0.0           # its memory must be back, or fit
    assert d.spawned[-1].cause == "lost"
    assert d.core.status().children[0].to_dict()["lost"] == 1
    assert len(d.results["stuck"]) == 1 and d.result("stuck").reason is Reason.TIMED_OUT
    assert len(d.core.breaker.deaths) == 1        # it counts towards the breaker
    d.feed(E.Exited(0, old, -9, []))              # a late exit of a child let go: nothing
    assert d.core.state is WorkerState.RUNNING and d.core.slots[0].lost_count == 1


def test_a_lost_child_whose_memory_is_not_back_and_does_not_fit_keeps_the_slot_out():
    d = Driver()
    d.ready()
    d.submit("stuck", policy={"executionTimeout": 1000})
    d.fits = False
    for t in (1.0, 2.0, 3.0, 3.0 + KILL_WAIT_S):
        d.at(t)
    assert d.core.state is WorkerState.BROKEN
    assert "could not be stopped" in d.core.failure_message
    assert "GPU memory is not back" in d.core.failure_message


def test_jobs_in_a_lost_child_fail_once_with_the_reason():
    d = Driver()                                  # heartbeat_timeout 10
    d.ready()
    d.submit("a")
    for t in (10.5, 11.5, 12.5):                  # hung: stop, SIGTERM, SIGKILL
        d.at(t)
    assert d.signals[-1] == (signal.SIGKILL, True) and "a" not in d.results
    d.at(12.5 + KILL_WAIT_S)
    r = d.result("a")
    assert len(d.results["a"]) == 1 and r.state is JobState.FAILED
    assert "declared lost" in r.error_info()["error_message"]
