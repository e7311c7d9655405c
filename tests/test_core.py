"""The supervisor's decisions, without processes: the core is fed events and a fake time,
and its actions are checked. (The real-process tests prove the wiring.)"""
import signal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import protocol as P
from worker.config import Settings
from worker.jobs import JobState, Reason
from worker.parent import actions as A
from worker.parent.core import SupervisorCore
from worker.parent.lifecycle import ChildState
from worker.parent.monitor import Reading
from worker.parent.status import WorkerState
from worker.protocol import HandlerMode, Kind

CLOCKS = dict(stop_grace=1.0, setup_timeout=30.0, heartbeat_timeout=10.0)


class Driver(A.JobListener):
    """Plays the loop: answers Spawn and ReadMemory, records the rest."""

    def __init__(self, devices=None, **overrides):
        self.core = SupervisorCore(Settings(**{**CLOCKS, **overrides}), devices=devices)
        self.now = 0.0
        self.next_pid = 100
        self.sent: list = []          # messages to the children, in order
        self.sent_to: list = []       # (slot, message), in order
        self.spawned: list = []       # Spawn actions
        self.warm_offs: list = []     # WarmOff reasons
        self.readied: list = []       # ChildReady: (slot, setup seconds)
        self.signals: list = []       # (signal, group)
        self.events: list = []
        self.results: dict = {}       # job id -> [results]
        self.reading = None
        self.apply(self.core.tick(self.now))

    # listener
    def on_start(self, job_id):
        self.events.append(("start", job_id))

    def on_progress(self, job_id, value):
        self.events.append(("progress", job_id, value))

    def on_chunk(self, job_id, value):
        self.events.append(("chunk", job_id, value))

    def on_result(self, result):
        self.results.setdefault(result.job_id, []).append(result)

    # the loop's part
    def apply(self, actions):
        for a in actions:
            if isinstance(a, A.Spawn):
                self.next_pid += 1
                self.spawned.append(a)
                self.apply(self.core.spawned(a.slot, self.next_pid, 0.0, self.now))
            elif isinstance(a, A.Send):
                assert a.data == a.msg.encode()
                slot = self.core.slots[a.slot]
                child = slot.child
                if isinstance(a.msg, P.Run):     # only to a live child, never to one going
                    assert child.state is ChildState.BUSY and child.stop_cause is None
                if isinstance(a.msg, P.Stop) and a.msg.reason.startswith("refresh"):
                    assert not slot.in_flight, "a refresh interrupted a running job"
                self.sent.append(a.msg)
                self.sent_to.append((a.slot, a.msg))
            elif isinstance(a, A.Signal):
                self.signals.append((a.sig, a.group))
            elif isinstance(a, A.ReadMemory):
                self.apply(self.core.memory(a.slot, self.reading, self.now))
            elif isinstance(a, A.Started):
                a.listener.on_start(a.job_id)
            elif isinstance(a, A.Progressed):
                a.listener.on_progress(a.job_id, a.value)
            elif isinstance(a, A.Chunked):
                a.listener.on_chunk(a.job_id, a.value)
            elif isinstance(a, A.Ended):
                a.listener.on_result(a.result)
            elif isinstance(a, A.WarmOff):
                self.warm_offs.append(a.reason)
            elif isinstance(a, A.ChildReady):
                self.readied.append((a.slot, a.setup_s))
            else:
                raise AssertionError(f"unknown action {a!r}")

    def at(self, t):
        self.now = t
        self.apply(self.core.tick(t))

    def worker_event(self, ev) -> bool:
        """A random sequence's event that is not about one child; False if it is."""
        kind = ev[0]
        if kind == "wait":
            self.at(self.now + ev[1])
        elif kind == "refresh":
            self.apply(self.core.refresh("hypothesis", self.now))
        elif kind == "stop":
            self.apply(self.core.stop(ev[1], self.now))
        elif kind == "cancel":
            self.apply(self.core.cancel(f"j{ev[1]}", ev[2], self.now))
        else:
            return False
        return True

    def wind_down(self):
        """Stop, let every stop escalate and every child exit: the core must finish."""
        self.apply(self.core.stop(0.0, self.now))
        for _ in range(10):
            live = [s.index for s in self.core.slots if s.child is not None]
            if not live:
                break
            self.at(self.now + 5)
            for i in live:
                self.exit(-9, slot=i)
        assert self.core.finished

    def ready(self, kind=Kind.SYNC, mode=HandlerMode.INLINE, concurrency=1, config=None,
              slot=0):
        self.msg(P.Ready(kind, mode, concurrency, config or {}, []), slot)

    def msg(self, m, slot=0):
        self.apply(self.core.message(slot, m, self.now))

    def submit(self, job_id, **extra):
        job = {"id": job_id, "input": {}, **extra}
        self.apply(self.core.submit(job, self, self.now, None, self.now))

    def run_of(self, job_id):
        """The token of the last run of this job sent to a child."""
        return [m.run for m in self.sent if isinstance(m, P.Run) and m.job["id"] == job_id][-1]

    def done(self, job_id, state=JobState.COMPLETED, body=None, refresh=False, concurrency=1,
             slot=None):
        reason = Reason.COMPLETED if state is JobState.COMPLETED else Reason.HANDLER_ERROR
        run = self.run_of(job_id)
        if slot is None:
            slot = self.slot_of(job_id)
        self.msg(P.Done(run, state, reason, body or {"output": job_id}, refresh, concurrency),
                 slot)

    def slot_of(self, job_id):
        """The slot the last run of this job was sent to."""
        return [i for i, m in self.sent_to if isinstance(m, P.Run) and m.job["id"] == job_id][-1]

    def exit(self, code, slot=0):
        self.apply(self.core.exited(slot, code, ["last line"], self.now))

    @property
    def child(self):
        return self.core.child

    def runs(self):
        return [m.job["id"] for m in self.sent if isinstance(m, P.Run)]

    def stops(self):
        return [m.reason for m in self.sent if isinstance(m, P.Stop)]

    def result(self, job_id):
        (r,) = self.results[job_id]
        return r


def test_jobs_wait_for_a_ready_child_then_run_one_at_a_time_inline():
    d = Driver()
    assert d.child.pid == 101 and d.child.state is ChildState.STARTING
    d.submit("a")
    d.submit("b")
    assert d.runs() == []
    d.ready()
    assert d.runs() == ["a"] and d.child.state is ChildState.BUSY
    d.done("a")
    assert d.runs() == ["a", "b"]
    d.done("b")
    assert d.result("a").state is JobState.COMPLETED and d.child.state is ChildState.READY
    assert d.core.status().finished == 2


def test_inline_timeout_stops_the_child_with_escalation_and_a_fresh_one_runs_on():
    d = Driver()
    d.ready()
    d.submit("slow", policy={"executionTimeout": 2000})
    d.at(1.99)
    assert "slow" not in d.results
    d.at(2.0)
    r = d.result("slow")
    assert r.state is JobState.TIMED_OUT and r.reason is Reason.TIMED_OUT
    assert "execution timeout of 2s" in r.error_info()["error_message"]
    assert d.signals == [(signal.SIGUSR1, False)] and d.stops() == ["job slow timed_out"]
    d.at(2.99)
    assert len(d.signals) == 1
    d.at(3.0)
    assert d.signals[-1] == (signal.SIGTERM, True)
    d.at(4.0)
    assert d.signals[-1] == (signal.SIGKILL, True)
    d.at(100.0)
    assert len(d.signals) == 3                      # nothing after SIGKILL but the exit
    d.exit(-9)
    assert d.child.pid == 102 and len(d.core.breaker.deaths) == 0
    assert len(d.results["slow"]) == 1


def test_cancel_of_a_thread_job_cancels_it_in_the_child_and_the_late_ack_is_ignored():
    d = Driver()
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    d.submit("x")
    d.submit("y")
    assert d.runs() == ["x", "y"]
    d.apply(d.core.cancel("x", False, d.now))
    assert d.result("x").state is JobState.CANCELLED
    assert isinstance(d.sent[-1], P.Cancel) and d.sent[-1].run == d.run_of("x")
    assert d.signals == [] and d.child.state is ChildState.BUSY
    d.msg(P.Done(d.run_of("x"), JobState.CANCELLED, Reason.CANCELLED, {}, False, 2))  # the ack
    assert len(d.results["x"]) == 1
    d.done("y")
    assert d.result("y").state is JobState.COMPLETED and d.child.pid == 101


def test_a_task_that_ignores_its_cancel_gets_its_child_replaced():
    d = Driver()
    d.ready(kind=Kind.ASYNC, mode=HandlerMode.TASKS, concurrency=4)
    d.submit("stubborn", policy={"executionTimeout": 500})
    d.at(0.5)
    assert d.result("stubborn").state is JobState.TIMED_OUT
    assert isinstance(d.sent[-1], P.Cancel) and d.stops() == []
    d.at(1.49)
    assert d.stops() == []
    d.at(1.5)                                        # stop_grace later, no ack
    assert d.stops() == ["job stubborn did not stop when cancelled"]
    assert d.signals == [(signal.SIGUSR1, False)]
    d.exit(0)
    assert d.child.pid == 102 and len(d.core.breaker.deaths) == 0


def test_unreadable_frames_fail_their_run_or_replace_the_child():
    d = Driver()
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    d.submit("a")
    d.submit("b")
    d.msg(P.Garbled("chunk", d.run_of("a"), "RecursionError: too deep"))
    assert d.result("a").error_info()["error_type"] == "ChunkUnreadable"
    assert isinstance(d.sent[-1], P.Cancel)            # its run is stopped in the child
    d.msg(P.Garbled("done", d.run_of("b"), "ValueError: bad"))
    r = d.result("b")
    assert r.state is JobState.FAILED and "could not be read" in r.error_info()["error_message"]
    assert d.child.pid == 101 and d.stops() == []
    d.msg(P.Garbled("done", d.run_of("a"), "ValueError: bad ack"))   # a's ack, unreadable
    assert not d.child.cancels
    d.msg(P.Garbled(None, None, "JSONDecodeError"))     # nothing legible: the channel is suspect
    assert d.stops() and d.stops()[-1].startswith("unreadable message")
    assert all(len(rs) == 1 for rs in d.results.values())


def test_cancel_of_a_queued_job_never_sends_it():
    d = Driver()
    d.submit("q")
    d.apply(d.core.cancel("q", False, d.now))
    d.ready()
    assert d.runs() == [] and d.result("q").state is JobState.CANCELLED


def test_a_crash_with_several_jobs_reruns_each_alone_and_fails_only_the_one_that_crashes():
    d = Driver()
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    for j in ("a", "b", "c"):
        d.submit(j)
    d.exit(-11)                      # a and b were in the child: either may be the cause
    assert not d.results and d.child.pid == 102
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    assert d.runs() == ["a", "b", "a"]          # a alone, although there is room for two
    d.done("a")
    assert d.runs()[-1] == "b" and len(d.core.in_flight) == 1
    d.exit(-11)                      # b alone: b is the poison
    r = d.result("b")
    assert r.state is JobState.FAILED and r.reason is Reason.WORKER_LOST
    assert "killed by SIGSEGV during the job" in r.error_info()["error_message"]
    assert d.result("a").state is JobState.COMPLETED
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    assert d.runs()[-1] == "c"
    assert d.core.state is WorkerState.RUNNING


def test_a_job_that_crashes_its_child_is_retried_up_to_job_max_crashes():
    d = Driver(job_max_crashes=2)
    d.ready()
    d.submit("boom")
    d.exit(7)
    assert "boom" not in d.results
    d.ready()
    assert d.runs() == ["boom", "boom"]
    d.exit(7)
    msg = d.result("boom").error_info()["error_message"]
    assert "exited with code 7" in msg and "killed the worker process 2 times" in msg


def test_the_breaker_counts_deaths_in_its_window_and_then_refuses_everything():
    d = Driver(restart_limit=3, restart_window=60.0, setup_timeout=0)
    for t in (0.0, 1.0):
        d.at(t)
        d.ready()
        d.exit(-9)
    d.at(70.0)                   # the first two deaths leave the window
    d.ready()
    d.exit(-9)
    assert d.core.state is WorkerState.RUNNING and len(d.core.breaker.deaths) == 1
    for t in (71.0, 72.0):
        d.at(t)
        d.ready()
        d.submit(f"j{t}")
        d.exit(-9)
    assert d.core.state is WorkerState.BROKEN and d.child is None
    assert "3 worker processes in a row died before finishing a job, within 60s" \
        in d.core.failure_message
    d.submit("late")
    assert d.result("late").reason is Reason.REFUSED
    spawned = d.next_pid
    d.at(200.0)
    assert d.next_pid == spawned                     # no respawn loop


def test_planned_stops_are_not_deaths_but_a_hung_child_is():
    d = Driver(restart_limit=2, max_jobs_per_child=1)
    d.ready()
    d.submit("a")
    d.done("a")                                      # recycled after one job
    assert d.stops() == ["refresh: it ran 1 jobs (WORKER_MAX_JOBS_PER_CHILD)"]
    d.exit(0)
    assert len(d.core.breaker.deaths) == 0
    d.ready()
    d.at(10.5)                                       # silent past heartbeat_timeout
    assert d.stops()[-1].startswith("no heartbeat for 10s")
    assert d.signals[-1] == (signal.SIGUSR1, False)
    d.exit(-15)
    assert len(d.core.breaker.deaths) == 1


def test_heartbeats_keep_a_busy_child_alive():
    d = Driver()
    d.ready()
    d.submit("long")
    for t in range(5, 60, 5):
        d.now = float(t)
        d.msg(P.Heartbeat(1, None))
        d.at(float(t))
    assert d.stops() == [] and "long" not in d.results


def test_refresh_waits_for_running_jobs_and_holds_the_queue_for_the_fresh_child():
    d = Driver()
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    d.submit("a")
    d.apply(d.core.refresh("requested", d.now))
    d.submit("b")
    assert d.runs() == ["a"] and d.stops() == []    # no new job to a child being replaced
    d.done("a", concurrency=2)
    assert d.stops() == ["refresh: requested"] and d.result("a").state is JobState.COMPLETED
    d.exit(0)
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    assert d.runs() == ["a", "b"] and d.child.pid == 102


def test_a_job_that_asks_for_refresh_worker_gets_a_fresh_child():
    d = Driver()
    d.ready()
    d.submit("r")
    d.done("r", refresh=True)
    assert d.result("r").refresh and d.stops() == ["refresh: the job asked for refresh_worker"]


def test_memory_is_read_between_jobs_and_over_the_limit_recycles():
    d = Driver(max_rss_mb=100)
    d.ready()
    d.reading = Reading("host", child_rss_mb=50)
    d.submit("a")
    d.done("a")
    assert d.stops() == []
    d.reading = Reading("host", child_rss_mb=150)
    d.submit("b")
    d.done("b")
    assert d.stops() == ["refresh: its resident memory is 150 MiB (WORKER_MAX_RSS_MB=100)"]


def test_a_failed_memory_read_never_blocks_the_queue():
    d = Driver(max_rss_mb=100)
    d.ready()
    d.reading = None
    d.submit("a")
    d.submit("b")
    d.done("a")
    assert d.runs() == ["a", "b"] and d.stops() == []


def test_setup_timeout_and_setup_failure_refuse_jobs_with_the_reason():
    d = Driver(setup_timeout=5.0)
    d.submit("a")
    d.at(5.0)
    assert d.stops() == ["setup timeout"] and d.signals == [(signal.SIGUSR1, False)]
    d.exit(-15)
    assert d.core.state is WorkerState.SETUP_FAILED
    assert "within 5s (WORKER_SETUP_TIMEOUT)" in d.result("a").error_info()["error_message"]

    d = Driver()
    d.submit("b")
    d.msg(P.SetupFailed("ImportError: no torch", "Traceback ..."))
    d.exit(1)
    info = d.result("b").error_info()
    assert info["error_type"] == "SetupFailed" and "no torch" in info["error_message"]
    assert info["error_traceback"] == "Traceback ..." and d.child is None


def test_shutdown_lets_the_running_job_finish_within_its_grace_and_refuses_the_queue():
    d = Driver()
    d.ready()
    d.submit("run")
    d.submit("queued")
    d.apply(d.core.stop(10.0, d.now))
    assert d.result("queued").reason is Reason.REFUSED and d.stops() == []
    d.done("run")
    assert d.stops() == ["shutdown"] and d.result("run").state is JobState.COMPLETED
    d.exit(0)
    assert d.core.finished and d.child is None


def test_shutdown_grace_ends_with_an_interrupting_stop():
    d = Driver()
    d.ready()
    d.submit("run")
    d.apply(d.core.stop(3.0, d.now))
    d.at(2.9)
    assert d.stops() == []
    d.at(3.0)
    assert d.stops() == ["shutdown"] and d.signals == [(signal.SIGUSR1, False)]
    d.exit(-10)
    assert d.result("run").reason is Reason.WORKER_LOST


def test_settings_from_start_become_the_effective_settings():
    d = Driver()
    d.ready(config={"max_result_mb": 0.5, "job_timeout": 3})
    status = d.core.status()
    assert status.settings.max_result_mb == 0.5 and status.settings.job_timeout == 3.0
    d.submit("t")
    d.at(3.0)
    assert d.result("t").state is JobState.TIMED_OUT


def test_a_duplicate_id_is_refused_without_touching_the_first():
    d = Driver()
    d.ready()
    d.submit("same")
    d.submit("same")
    assert [r.reason for r in d.results["same"]] == [Reason.REFUSED]
    d.done("same")
    assert [r.state for r in d.results["same"]] == [JobState.FAILED, JobState.COMPLETED]


def test_an_application_xid_refreshes_after_the_job_and_others_break_the_worker():
    d = Driver()
    d.ready()
    d.submit("a")
    d.apply(d.core.gpu_event(43, "xid", d.now))
    assert d.stops() == []
    d.done("a")
    assert d.stops() == ["refresh: GPU Xid 43"]
    d.exit(0)
    d.ready()
    d.submit("b")
    d.apply(d.core.gpu_event(79, "xid", d.now))
    assert d.core.state is WorkerState.BROKEN and d.result("b").reason is Reason.REFUSED
    d.exit(-9)
    assert d.core.state is WorkerState.BROKEN and d.child is None


# --- random sequences: the invariants hold whatever happens, in any order --------------

EVENTS = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 5), st.sampled_from([0, 500, 3000])),
    st.tuples(st.just("cancel"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("ready"), st.sampled_from(list(HandlerMode)), st.integers(1, 3)),
    st.tuples(st.just("done"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("exit"), st.sampled_from([0, 1, -9, -11])),
    st.tuples(st.just("wait"), st.floats(0, 20)),
    st.tuples(st.just("refresh")),
    st.tuples(st.just("stop"), st.floats(0, 5)),
), max_size=40)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_every_job_ends_exactly_once_and_runs_only_on_a_live_child(events):
    d = Driver(restart_limit=4, job_max_crashes=2)
    submitted = set()
    n = 0
    for ev in events:
        kind = ev[0]
        if kind == "submit":
            n += 1
            job_id = f"j{n}"
            submitted.add(job_id)
            extra = {"policy": {"executionTimeout": ev[2]}} if ev[2] else {}
            d.submit(job_id, **extra)
        elif d.worker_event(ev):
            pass
        elif kind == "ready" and d.child is not None and d.child.state is ChildState.STARTING:
            d.ready(kind=Kind.ASYNC if ev[1] is HandlerMode.TASKS else Kind.SYNC, mode=ev[1],
                    concurrency=ev[2])
        elif kind == "done" and d.child is not None:
            running = [t.id for t in d.core.in_flight.values()]
            if running:
                d.done(running[ev[1] % len(running)], refresh=ev[2],
                       concurrency=d.child.concurrency)
        elif kind == "exit" and d.child is not None:
            d.exit(ev[1])
        child = d.child
        if child is not None and d.core.in_flight:
            assert child.state in (ChildState.BUSY, ChildState.STOPPING)
        assert len(d.core.in_flight) <= (child.concurrency if child else 0)
    d.wind_down()
    assert set(d.results) == submitted
    assert all(len(rs) == 1 for rs in d.results.values()), d.results
    assert all(r.state.final for rs in d.results.values() for r in rs)
    for (r,) in d.results.values():      # a setup wait is part of the delay, never more
        assert (0 <= r.setup_wait_ms <= r.delay_ms) if r.ran else r.times() == {}
    assert d.spawned[0].cause == "first" and {s.cause for s in d.spawned} <= {
        "first", "refresh", "timeout", "cancel", "crash", "hung", "setup_failed", "error"}


def test_each_start_says_why_and_each_job_its_times():
    """Spawn.cause and ChildReady (the metrics' child starts and setup time), and a
    result's delay, setup wait and execution, on a fake clock."""
    d = Driver(max_jobs_per_child=3)
    d.submit("a")                       # queued at 0 while the first child sets up
    d.at(2.0)
    d.ready()                           # ready after 2 s
    d.at(3.0)
    d.done("a")
    a = d.result("a")
    assert (a.delay_ms, a.setup_wait_ms, a.execution_ms) == (2000, 2000, 1000)
    d.submit("b")                       # a ready child: no setup wait
    d.at(3.5)
    d.done("b", refresh=True)           # refresh_worker: replaced
    b = d.result("b")
    assert (b.delay_ms, b.setup_wait_ms, b.execution_ms) == (0, 0, 500)
    d.submit("c")                       # queued while the old child stops
    d.at(4.0)
    d.exit(0)
    d.at(4.5)
    d.ready()
    d.at(5.0)
    d.done("c")
    c = d.result("c")
    assert (c.delay_ms, c.setup_wait_ms, c.execution_ms) == (1000, 1000, 500)
    d.submit("slow", policy={"executionTimeout": 1000})
    d.at(6.0)                           # timed out: an inline job's child is replaced
    d.exit(-15)
    d.ready()
    d.submit("boom")
    d.exit(-9)                          # crashed during the job
    d.ready()
    for job in ("x", "y", "z"):         # WORKER_MAX_JOBS_PER_CHILD=3: recycled
        d.submit(job)
        d.done(job)
    d.exit(0)
    assert [s.cause for s in d.spawned] == ["first", "refresh", "timeout", "crash", "recycle"]
    assert [round(t, 3) for _, t in d.readied] == [2.0, 0.5, 0.0, 0.0]
