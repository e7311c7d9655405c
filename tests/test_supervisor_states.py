"""The supervisor driven through random event sequences (Hypothesis stateful testing),
through the same interfaces the real sources use, over a real child that misbehaves on
request. Invariants, checked at every step and at the end:

- every job ends in exactly one final state, reported exactly once;
- no job is dispatched to a child that is not ready;
- never two children at once;
- a refresh never interrupts a running job.
"""
import threading

import psutil
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule)

from tests.support import Harness
from worker.jobs import JobState
from worker.parent import mp_launcher
from worker.parent.supervisor import ChildState, JobListener


class Watcher(JobListener):
    """Checks dispatch-time invariants from the supervisor's own thread."""

    def __init__(self, sup):
        self.sup = sup
        self.lock = threading.Condition()
        self.results = {}
        self.counts = {}
        self.running = set()
        self.violations = []

    def on_start(self, job_id):
        state = self.sup.status.child_state
        if state is not ChildState.BUSY:
            self.violations.append(f"{job_id} dispatched to a child in state {state}")
        alive = _live_children()
        if alive > 1:
            self.violations.append(f"{alive} children alive when {job_id} started")
        with self.lock:
            self.running.add(job_id)
            self.lock.notify_all()

    def on_result(self, result):
        with self.lock:
            self.counts[result.job_id] = self.counts.get(result.job_id, 0) + 1
            self.results[result.job_id] = result
            self.running.discard(result.job_id)
            self.lock.notify_all()


def _live_children() -> int:
    pid = mp_launcher.template_pid()
    if pid is None:
        return 0
    try:
        kids = psutil.Process(pid).children()
    except psutil.Error:
        return 0
    return sum(1 for k in kids if _alive(k))


def _alive(proc) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


KINDS = {
    "ok": {"do": "ok"},
    "progress": {"do": "progress", "n": 3},
    "raise": {"do": "raise"},
    "dies": {"do": "os_exit"},
    "sleeps": {"do": "sleep", "seconds": 0.15},
    "too_long": {"do": "sleep", "seconds": 30},
}


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.h = Harness("misbehave.py", stop_grace=0.5, restart_limit=10_000,
                         restart_window=1.0)
        self.w = Watcher(self.h.sup)
        assert self.h.sup.wait_ready(30)
        self.n = 0
        self.kinds = {}
        self.cancelled = set()
        self.guarded = set()      # running when a refresh was asked: must complete
        self.stopped = False

    def _submit(self, kind, **extra):
        self.n += 1
        job_id = f"{kind}-{self.n}"
        self.kinds[job_id] = kind
        self.h.sup.submit({"id": job_id, "input": dict(KINDS[kind]), **extra}, self.w)
        return job_id

    @rule(kind=st.sampled_from(["ok", "progress", "raise", "dies", "sleeps"]))
    def submit(self, kind):
        self._submit(kind)

    @rule()
    def submit_one_that_times_out(self):
        self._submit("too_long", policy={"executionTimeout": 200})

    @rule(data=st.data())
    def cancel(self, data):
        if self.kinds:
            job_id = data.draw(st.sampled_from(sorted(self.kinds)))
            self.cancelled.add(job_id)
            self.h.sup.cancel(job_id)

    @rule()
    def refresh_while_a_job_runs(self):
        job_id = self._submit("sleeps")
        with self.w.lock:
            started = self.w.lock.wait_for(
                lambda: job_id in self.w.running or job_id in self.w.results, 10)
            running = job_id in self.w.running
        assert started
        if running and not self.stopped:
            self.guarded.add(job_id)
        self.h.sup.refresh("hypothesis")

    @rule()
    def refresh(self):
        with self.w.lock:
            running = set(self.w.running)
        self.guarded |= {j for j in running if self.kinds[j] in ("ok", "sleeps", "progress")}
        self.h.sup.refresh("hypothesis")

    @rule()
    def wait_a_little(self):
        with self.w.lock:
            self.w.lock.wait(0.05)

    @precondition(lambda self: self.n >= 8 and not self.stopped)
    @rule()
    def shutdown(self):
        # grace covers the short jobs: a job running now must still complete
        with self.w.lock:
            running = set(self.w.running)
        self.guarded |= {j for j in running if self.kinds[j] in ("ok", "sleeps", "progress")}
        self.stopped = True
        self.h.sup.stop(grace=2.0)

    @invariant()
    def reported_at_most_once_and_dispatched_right(self):
        assert not self.w.violations, self.w.violations
        assert all(n == 1 for n in self.w.counts.values()), self.w.counts

    def teardown(self):
        try:
            with self.w.lock:
                done = self.w.lock.wait_for(
                    lambda: all(j in self.w.results for j in self.kinds), 60)
            missing = [j for j in self.kinds if j not in self.w.results]
            assert done, f"jobs without a final state: {missing}"
            assert all(self.w.counts[j] == 1 for j in self.kinds), self.w.counts
            assert not self.w.violations, self.w.violations
            for job_id in self.guarded - self.cancelled:
                result = self.w.results[job_id]
                assert result.state is JobState.COMPLETED, (job_id, result.body)
            for job_id, kind in self.kinds.items():
                result = self.w.results[job_id]
                if kind == "too_long" and job_id not in self.cancelled and not self.stopped:
                    assert result.state in (JobState.TIMED_OUT, JobState.FAILED), result.body
        finally:
            self.h.close()


SupervisorMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestSupervisorStates = SupervisorMachine.TestCase
