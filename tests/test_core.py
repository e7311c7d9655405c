"""The supervisor's decisions, without processes: the core is fed events through the
loop's own dispatcher (dispatch.py) on a fake clock, and its actions are checked. (The
real-process tests prove the wiring.)"""
import collections
import signal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import protocol as P
from worker.config import Settings
from worker.jobs import JobState, Reason
from worker.parent import actions as A
from worker.parent import events as E
from worker.parent.core import SupervisorCore
from worker.parent.dispatch import Dispatcher
from worker.parent.status import ChildState
from worker.parent.monitor import Reading
from worker.parent.status import WorkerState
from worker.protocol import HandlerMode, Kind

CLOCKS = dict(stop_grace=1.0, setup_timeout=30.0, heartbeat_timeout=10.0, spare="off")


class Driver(A.JobListener):
    """Plays the loop's part (dispatch.Effects) through the loop's own dispatcher: answers
    Settle, Spawn and ReadMemory with their events on a later turn — at once, unless
    `hold` keeps them until `deliver()` — and records the rest."""

    def __init__(self, devices=None, hold=False, **overrides):
        self.core = SupervisorCore(Settings(**{**CLOCKS, **overrides}), devices=devices)
        self.now = 0.0
        self.dispatcher = Dispatcher(self.core, lambda: self.now, self)
        self.later: collections.deque = collections.deque()   # outcome events, in order
        self.hold = hold
        self.next_pid = 100
        self.pids: dict = {}          # child number -> pid
        self.sent: list = []          # messages to the children, in order
        self.sent_to: list = []       # (slot, message), in order
        self.sent_cids: list = []     # (child number, message), in order
        self.spawned: list = []       # Spawn actions
        self.settles: list = []       # Settle actions
        self.warm_offs: list = []     # WarmOff reasons
        self.readied: list = []       # ChildReady: (slot, setup seconds)
        self.signals: list = []       # (signal, group)
        self.killed: list = []        # child numbers sent SIGKILL
        self.events: list = []
        self.results: dict = {}       # job id -> [results]
        self.reading = None
        self.gone: set = set()        # child numbers that have exited (they exit once)
        self.fail_spawn = False       # the launcher fails: SpawnFailed
        self.transient = False        # ... for a moment (EMFILE, a launcher replaced)
        self.spawn_error = "OSError: injected"
        self.short_of_gpu = False     # ... a spare's fit check found too little GPU memory
        self.fits = True              # Settled's fit check, after a lost child
        self.fail_send = 0            # the next n Sends raise in the loop's part
        self.feed(E.Tick())

    def feed(self, event):
        self.dispatcher.feed(event)
        if not self.hold:
            self.deliver()

    def deliver(self, n=None):
        """Feed the outcome events waiting for a later turn (the first `n` of them)."""
        while self.later and n != 0:
            self.dispatcher.feed(self.later.popleft())
            n = None if n is None else n - 1

    # listener
    def on_start(self, job_id):
        self.events.append(("start", job_id))

    def on_progress(self, job_id, value):
        self.events.append(("progress", job_id, value))

    def on_chunk(self, job_id, value):
        self.events.append(("chunk", job_id, value))

    def on_result(self, result):
        self.events.append(("result", result.job_id))
        self.results.setdefault(result.job_id, []).append(result)

    # the loop's part (dispatch.Effects)
    def before(self):
        pass

    def _slot_of_child(self, cid):
        return next((s for s in self.core.slots
                     if s.holds(cid) or s.owns(cid) is not None), None)

    def send(self, a):
        if self.fail_send:
            self.fail_send -= 1
            raise RuntimeError("injected: the channel failed")
        assert a.data == a.msg.encode()
        if a.cid in self.gone:           # the loop let go of its host before its exit came:
            assert not isinstance(a.msg, P.Run), "a job sent to a child known to be gone"
            return                       # a Stop or a Cancel to it goes nowhere
        slot = self._slot_of_child(a.cid)
        assert slot is not None, "a message to a child the core does not hold"
        if isinstance(a.msg, P.Run):     # only to a live child, never to one going
            assert slot.holds(a.cid)
            assert slot.child.state is ChildState.BUSY and slot.child.stop_cause is None
        if isinstance(a.msg, P.Stop) and a.msg.reason.startswith("refresh") \
                and slot.holds(a.cid):
            assert not slot.in_flight, "a refresh interrupted a running job"
        self.sent.append(a.msg)
        self.sent_to.append((slot.index, a.msg))
        self.sent_cids.append((a.cid, a.msg))

    def signal(self, a):
        self.signals.append((a.sig, a.group))
        if a.sig == signal.SIGKILL:
            self.killed.append(a.cid)
            if self._slot_of_child(a.cid) is None and a.cid in self.pids \
                    and a.cid not in self.gone:
                # a process the core gave up on: its exit comes, and must change nothing
                self.gone.add(a.cid)
                self.later.append(E.Exited(self._spawn_slot(a.cid), a.cid, -9, []))

    def _spawn_slot(self, cid):
        return next(s.slot for s in self.spawned if s.cid == cid)

    def settle(self, a):
        self.settles.append(a)
        self.later.append(E.Settled(a.slot, a.cid, 0.0, self.fits))

    def spawn(self, a):
        if self.fail_spawn:
            self.later.append(E.SpawnFailed(a.slot, a.cid, self.spawn_error,
                                            self.transient, self.short_of_gpu))
            return
        self.next_pid += 1
        self.spawned.append(a)
        self.pids[a.cid] = self.next_pid
        self.later.append(E.Spawned(a.slot, a.cid, self.next_pid))

    def read_memory(self, a):
        self.later.append(E.MemoryRead(a.slot, a.cid, self.reading))

    def warm_off(self, a):
        self.warm_offs.append(a.reason)

    def child_ready(self, a):
        self.readied.append((a.slot, a.setup_s))

    def tell(self, a):
        if isinstance(a, A.Started):
            a.listener.on_start(a.job_id)
        elif isinstance(a, A.Progressed):
            a.listener.on_progress(a.job_id, a.value)
        else:
            a.listener.on_chunk(a.job_id, a.value)

    def ended(self, a):
        a.listener.on_result(a.result)

    # events, as the loop would feed them
    def at(self, t):
        self.now = t
        self.feed(E.Tick())

    def cancel(self, job_id, queued_only=False):
        self.feed(E.Cancel(job_id, queued_only))

    def refresh(self, reason="requested"):
        self.feed(E.Refresh(reason))

    def stop(self, grace):
        self.feed(E.Stop(grace))

    def gpu_event(self, xid, what="xid"):
        self.feed(E.GpuEvent(xid, what))

    def worker_event(self, ev) -> bool:
        """A random sequence's event that is not about one child; False if it is."""
        kind = ev[0]
        if kind == "wait":
            self.at(self.now + ev[1])
        elif kind == "refresh":
            self.refresh("hypothesis")
        elif kind == "stop":
            self.stop(ev[1])
        elif kind == "cancel":
            self.cancel(f"j{ev[1]}", ev[2])
        elif kind == "deliver":
            self.deliver(ev[1])
        else:
            return False
        return True

    def play(self, ev):
        """One step of a random sequence; the id of the job it submitted, if any."""
        kind = ev[0]
        if kind == "submit":
            self.played = getattr(self, "played", 0) + 1
            job_id = f"j{self.played}"
            self.submit(job_id, **({"policy": {"executionTimeout": ev[2]}} if ev[2] else {}))
            return job_id
        if self.worker_event(ev):
            return None
        child = self.child
        if kind == "ready" and child is not None and child.state is ChildState.STARTING:
            self.ready(kind=Kind.ASYNC if ev[1] is HandlerMode.TASKS else Kind.SYNC,
                       mode=ev[1], concurrency=ev[2])
        elif kind == "done" and child is not None:
            running = [t.id for t in self.core.in_flight.values()]
            if running:
                self.done(running[ev[1] % len(running)], refresh=ev[2],
                          concurrency=child.concurrency)
        elif kind == "exit" and child is not None:
            self.exit(ev[1])
        return None

    def wind_down(self):
        """Stop, let every stop escalate and every child exit: the core must finish."""
        self.hold = False
        self.deliver()
        self.stop(0.0)
        for _ in range(10):
            live = [(s.index, c.cid) for s in self.core.slots
                    for c in (s.child, s.spare, *s.retiring) if c is not None]
            if not live:
                break
            self.at(self.now + 5)
            for i, cid in live:
                if cid not in self.gone:
                    self.gone.add(cid)
                    self.feed(E.Exited(i, cid, -9, ["last line"]))
        assert self.core.finished

    def ready(self, kind=Kind.SYNC, mode=HandlerMode.INLINE, concurrency=1, config=None,
              slot=0):
        self.msg(P.Ready(kind, mode, concurrency, config or {}, []), slot)

    def cid(self, slot=0):
        child = self.core.slots[slot].child
        return child.cid if child is not None else -1

    def msg(self, m, slot=0):
        self.feed(E.Message(slot, self.cid(slot), m))

    def submit(self, job_id, **extra):
        job = {"id": job_id, "input": {}, **extra}
        self.feed(E.Submit(job, self, self.now))

    def run_of(self, job_id):
        """The token of the last run of this job sent to a child."""
        return [m.run for m in self.sent if isinstance(m, P.Run) and m.job["id"] == job_id][-1]

    def done_msg(self, job_id, state=JobState.COMPLETED, body=None, refresh=False,
                 concurrency=1):
        reason = Reason.COMPLETED if state is JobState.COMPLETED else Reason.HANDLER_ERROR
        return P.Done(self.run_of(job_id), state, reason, body or {"output": job_id}, refresh,
                      concurrency)

    def done(self, job_id, state=JobState.COMPLETED, body=None, refresh=False, concurrency=1,
             slot=None):
        if slot is None:
            slot = self.slot_of(job_id)
        self.msg(self.done_msg(job_id, state, body, refresh, concurrency), slot)

    def slot_of(self, job_id):
        """The slot the last run of this job was sent to."""
        return [i for i, m in self.sent_to if isinstance(m, P.Run) and m.job["id"] == job_id][-1]

    def exit(self, code, slot=0, messages=()):
        """The slot's child exits (a child exits once: a second time is not an event)."""
        cid = self.cid(slot)
        if cid == -1 or cid in self.gone:
            return
        self.gone.add(cid)
        self.feed(E.Exited(slot, cid, code, ["last line"], tuple(messages)))

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
    # The listeners hear the events in the order they happened: a's end, then b's start
    # (one step carries both).
    assert d.events == [("start", "a"), ("result", "a"), ("start", "b"), ("result", "b")]


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
    d.at(8.99)                                      # KILL_WAIT_S after SIGKILL
    assert len(d.signals) == 3                      # nothing after SIGKILL but the exit
    d.exit(-9)
    assert d.child.pid == 102 and len(d.core.breaker.deaths) == 0
    assert len(d.results["slow"]) == 1


def test_policy_ttl_counts_from_the_queue_and_ends_queued_or_running_jobs():
    """policy.ttl: from the moment the job was queued (its source's queue included: the
    Submit's age), waiting and running together."""
    d = Driver()
    d.ready()
    d.submit("busy")                                       # holds the only child
    d.submit("short", policy={"ttl": 1000})
    d.feed(E.Submit({"id": "aged", "input": {}, "policy": {"ttl": 3000}}, d, d.now, None,
                    2.5))                                  # waited 2.5 s elsewhere already
    d.submit("long", policy={"ttl": 5000, "executionTimeout": 60_000})
    d.at(0.5)
    assert "aged" in d.results and "short" not in d.results
    d.at(1.0)
    for job_id in ("short", "aged"):
        r = d.result(job_id)
        assert r.state is JobState.TIMED_OUT and "before it started" in \
            r.error_info()["error_message"]
    assert d.runs() == ["busy"]                           # neither ever ran
    d.at(2.0)
    d.done("busy")
    assert d.runs() == ["busy", "long"]                   # 3 s of its ttl left
    d.at(4.99)
    assert "long" not in d.results
    d.at(5.0)
    r = d.result("long")
    assert r.state is JobState.TIMED_OUT and "policy.ttl" in r.error_info()["error_message"]
    assert all(len(v) == 1 for v in d.results.values())


def test_cancel_of_a_thread_job_cancels_it_in_the_child_and_the_late_ack_is_ignored():
    d = Driver()
    d.ready(mode=HandlerMode.THREADS, concurrency=2)
    d.submit("x")
    d.submit("y")
    assert d.runs() == ["x", "y"]
    d.cancel("x")
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
    d.cancel("q")
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
    d.refresh()
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
    d.stop(10.0)
    assert d.result("queued").reason is Reason.REFUSED and d.stops() == []
    d.done("run")
    assert d.stops() == ["shutdown"] and d.result("run").state is JobState.COMPLETED
    d.exit(0)
    assert d.core.finished and d.child is None


def test_shutdown_grace_ends_with_an_interrupting_stop():
    d = Driver()
    d.ready()
    d.submit("run")
    d.stop(3.0)
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
    d.gpu_event(43)
    assert d.stops() == []
    d.done("a")
    assert d.stops() == ["refresh: GPU Xid 43"]
    d.exit(0)
    d.ready()
    d.submit("b")
    d.gpu_event(79)
    assert d.core.state is WorkerState.BROKEN and d.result("b").reason is Reason.REFUSED
    d.exit(-9)
    assert d.core.state is WorkerState.BROKEN and d.child is None


# --- random sequences: the invariants hold whatever happens, in any order --------------

STEPS = (   # what Driver.play understands
    st.tuples(st.just("submit"), st.integers(0, 5), st.sampled_from([0, 500, 3000])),
    st.tuples(st.just("cancel"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("ready"), st.sampled_from(list(HandlerMode)), st.integers(1, 3)),
    st.tuples(st.just("done"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("exit"), st.sampled_from([0, 1, -9, -11])),
    st.tuples(st.just("wait"), st.floats(0, 20)),
    st.tuples(st.just("refresh")),
    st.tuples(st.just("stop"), st.floats(0, 5)),
)
EVENTS = st.lists(st.one_of(*STEPS), max_size=40)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_every_job_ends_exactly_once_and_runs_only_on_a_live_child(events):
    d = Driver(restart_limit=4, job_max_crashes=2)
    submitted = set()
    for ev in events:
        submitted.add(d.play(ev))
        child = d.child
        if child is not None and d.core.in_flight:
            assert child.state in (ChildState.BUSY, ChildState.STOPPING)
        assert len(d.core.in_flight) <= (child.concurrency if child else 0)
    d.wind_down()
    submitted.discard(None)
    assert set(d.results) == submitted
    assert all(len(rs) == 1 for rs in d.results.values()), d.results
    assert all(r.state.final for rs in d.results.values() for r in rs)
    for (r,) in d.results.values():      # a setup wait is part of the delay, never more
        assert (0 <= r.setup_wait_ms <= r.delay_ms) if r.ran else r.times() == {}
    assert d.spawned[0].cause == "first" and {s.cause for s in d.spawned} <= {
        "first", "refresh", "timeout", "cancel", "crash", "hung", "setup_failed", "error",
        "lost"}


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


def test_a_refresh_asked_while_the_child_is_being_started_is_not_lost():
    """Settled and Spawned come on later turns: a refresh in between is kept by the slot
    and applied once the child exists (it never falls between a start and its record).
    As with any child asked to refresh, it goes at its first idle moment: when ready."""
    d = Driver(hold=True)
    d.submit("a")
    assert d.child is None and d.core.slots[0].starting is not None
    d.refresh("asked early")
    d.deliver()
    d.ready()
    assert d.runs() == [] and d.stops() == ["refresh: asked early"]
    d.hold = False
    d.exit(0)
    d.ready()
    d.done("a")
    assert d.result("a").state is JobState.COMPLETED
    assert d.stops() == ["refresh: asked early"]       # asked once, done once


def test_a_refresh_asked_while_a_start_fails_for_a_moment_goes_to_the_next_child():
    """The start it was asked during is given up (a moment's failure); the child started
    after the backoff gets it, once it has a process, as the first one would have."""
    d = Driver(hold=True)
    d.refresh("code changed")          # the child is settling
    d.fail_spawn, d.transient = True, True
    d.deliver()                        # Settled -> Spawn -> SpawnFailed
    assert d.child is None and d.core.slots[0].start_failures == 1
    d.fail_spawn = False
    d.at(d.now + 1.0)                  # the backoff is over: another start
    d.deliver()
    d.ready()
    d.submit("a")
    assert d.runs() == [] and d.stops() == ["refresh: code changed"]


def test_events_that_answer_an_action_come_on_a_later_turn_and_in_order():
    """No re-entrant apply: the core's answer to Settle is Spawn only when Settled is fed."""
    d = Driver(hold=True)
    assert [type(e).__name__ for e in d.later] == ["Settled"] and not d.spawned
    d.deliver(1)
    assert [type(e).__name__ for e in d.later] == ["Spawned"] and len(d.spawned) == 1
    assert d.child is None
    d.deliver(1)
    assert d.child is not None and d.child.cid == d.spawned[0].cid
