"""The supervisor's loop: one thread that feeds events to the core and carries out the
actions it returns.

A job's path through the parent:

  source thread          loop thread (this module)                         child process
  ─────────────          ─────────────────────────                         ─────────────
  submit(job) ─Submit─► event queue ─► Dispatcher.feed ─► core.handle ─► [Send(Run), Started]
                                                             │
                        ChildHost.send ◄──── Send(Run) ◄─────┘
                             └──────────────────── frame ─────────────────► runtime: handler(job)
  on_start ◄──────────── Started
                        selector ─► ChildHost.read ─► Message(Progress/Chunk) ◄── frames ──┤
  on_progress/on_chunk ◄── Progressed/Chunked ◄── core.handle                              │
                        selector ─► ChildHost.read ─► Message(Done) ◄──────── frame ───────┘
  on_result ◄─────────── Ended ◄── core.handle (+ ReadMemory?, Send(Stop)?)
  status (read-only) ◄── published once per turn of the loop

Inside core.handle: core.py decides for the jobs and across children (queue, dispatch,
results, blame, the worker's fate) → slots.py, one place per child (roles, starts,
stops, clocks) → child.py, one Child per process (its phase, jobs, stop steps, and the
judgement of its exit); each answers with actions, which come back here.

Starting a child (its phases settling → spawning → setting up → ready): core → Settle
(wait for the last child's GPU memory, off the loop when there is a wait) → Settled →
core → Spawn → Launcher.start in a thread (spawns.py: a
launcher can hang) → its answer on the command queue → a ChildHost and Spawned, or
SpawnFailed. A start past the launcher's bound declares the launcher dead (replaced; the
children it started live on) and fails for a moment: the core retries. Every outcome of
an action comes back as an event, never as a call into the core (dispatch.py).

The public methods (any thread) only queue events and wake the loop. The loop waits on
one selector: each child's channel, pidfd and launcher report (its ChildHost's) and a
wake-up pipe, until the nearest of the core's deadlines, a start's bound and a host's next
look at its child. After every turn it publishes a frozen Status: the only view of the
supervisor other threads get.
"""
from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from typing import Any, Callable

from .. import protocol as P
from .. import tracing
from ..config import Settings
from ..jobs import JobResult, JobState, Reason, failure
from . import actions as A
from . import device_settle, placement, preloads, spare_fit
from . import events as E
from .actions import JobListener
from .child_host import ChildHost, exited_hosts
from .commands import Commands
from .core import SupervisorCore
from .dispatch import Dispatcher
from .gpu_procs import ProcessMemory
from .health_file import HealthFile
from .launcher import Launcher
from .spawns import Spawning, Spawns
from .causes import StartCause
from .metrics import Metrics
from .monitor import make_probe
from .mp_launcher import MpLauncher
from .output import log_child_line
from .status import ChildState, Status, WorkerState, health_view

log = logging.getLogger("worker")
STALL_S = 1.0     # woke this much after the wake asked and the sleep's start: it was stopped

__all__ = ["Supervisor", "JobListener", "JobResult", "ChildState", "WorkerState", "Status"]


class Supervisor:
    def __init__(self, settings: Settings, target: Any, launcher: Launcher | None = None,
                 output_sink: Callable | None = None, probe: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_fatal: Callable[[str], None] | None = None,
                 devices: list | None = None, one_child: bool = False):
        """`devices`: each child's GPUs, one entry per child; by default placement.plan
        of the GPUs visible here, WORKER_CHILDREN and WORKER_GPUS_PER_CHILD (only its
        first child with `one_child`)."""
        self.target = target
        self.launcher = launcher or MpLauncher(
            settings.start_method,
            settings.preload + tuple(m for m in preloads.implied(target)
                                     if m not in settings.preload),
            warm=target if settings.warm_refresh else None)
        # monitor.HostProbe/NvmlProbe, or any .read(pid); made here: placement uses it
        self.probe = probe if probe is not None else make_probe()
        self.gpu_procs = ProcessMemory(self.probe)     # per-process VRAM, where NVML's pids are ours
        if devices is None:
            devices = placement.plan(
                placement.visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), self.probe),
                settings.gpus_per_child, settings.children)[:1 if one_child else None]
        if len(devices) > 1:
            log.info("%d children: %s", len(devices), "; ".join(
                f"{i}: {','.join(d) or 'no GPU'}" for i, d in enumerate(devices)))
        self.core = SupervisorCore(settings, tuple(self.launcher.preload),
                                   check_preload=self.launcher.method == "forkserver",
                                   devices=devices)
        self.output_sink = output_sink or log_child_line
        self.clock = clock
        self.on_fatal = on_fatal         # the loop itself died: the process should exit
        self.status: Status = self.core.status()
        self.metrics = Metrics(lambda: self.status, self.probe)
        self._hosts: dict[int, ChildHost] = {}     # by child number
        self._dispatcher = Dispatcher(self.core, clock, self)
        self._dirty = False              # the core changed since the last publish
        self._fresh = False              # self.status was computed after the last change
        self._health = HealthFile(settings) if settings.health_file else None
        self._probe_stop = threading.Event()
        self._stopping = threading.Event()     # stop() was called: a settle wait gives up
        self._events = Commands()
        self._spawns = Spawns(self.launcher, self._events.put, clock)
        self._polled: list = []          # hosts with a time to look at their child
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._events.wake_fd, selectors.EVENT_READ, (None, "wake"))
        self._changed = threading.Condition()
        self._capacity_watchers: list = []
        self._published_capacity = 0
        self._thread = threading.Thread(target=self._loop, name="gpu-worker-supervisor",
                                        daemon=True)

    # --- public API (any thread) ---------------------------------------------------------

    def start(self) -> "Supervisor":
        watch = getattr(self.probe, "watch_xids", None)
        if watch is not None:
            watch(self.gpu_event, self._probe_stop)
        s = self.status.settings
        if s.metrics_port:
            self.metrics.serve(s.metrics_host, s.metrics_port)
        self._thread.start()
        return self

    def submit(self, job: dict, listener: JobListener, raw: Any = None,
               age: float = 0.0) -> None:
        """Queue a job. Its listener hears exactly one on_result. `raw`, when given, is
        the job's exact JSON encoding (bytes, or a tuple of bytes-like parts that join to
        it): it goes to the child as is (no re-encoding, no copy). `age`: seconds it
        already waited in a queue of the source's (its policy.ttl counts from there)."""
        tracing.TRACES.remember(job)
        if not self._events.put(E.Submit(job, listener, self.clock(), raw, max(0.0, age))):
            self._refuse_late(job, listener)

    def cancel(self, job_id: str, queued_only: bool = False) -> None:
        """End a job as CANCELLED: dropped if queued, stopped if running (unless
        queued_only)."""
        self._events.put(E.Cancel(job_id, queued_only))

    def refresh(self, reason: str = "requested") -> None:
        """Replace the child once it is idle."""
        self._events.put(E.Refresh(reason))

    def stop(self, grace: float = 0.0) -> None:
        """Stop taking jobs; let running ones finish for `grace` seconds; stop the child."""
        self._stopping.set()
        self._events.put(E.Stop(grace))

    def gpu_event(self, xid: int, what: str) -> None:
        """An Xid or ECC event from NVML (the probe's watcher thread)."""
        self._events.put(E.GpuEvent(xid, what))

    def kill_child_group(self, sig: int) -> None:
        """Signal every child's process group now (a second SIGTERM: no time for
        courtesy)."""
        for host in list(self._hosts.values()):
            host.proc.signal_group(sig)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_until(self, predicate: Callable[[Status], bool],
                   timeout: float | None = None) -> bool:
        """Wait until `predicate(status)` holds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.status), timeout)

    def on_capacity(self, fn: Callable[[], None]) -> None:
        """Call `fn` (from the loop's thread; it must be quick) whenever the number of jobs
        the worker takes now changes: a source waiting for room hears of it at once."""
        self._capacity_watchers.append(fn)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once a child is ready; False if the worker failed or the time ran out."""
        self.wait_until(lambda s: s.ready or s.state is not WorkerState.RUNNING, timeout)
        return self.status.ready

    # Shorthands for the published status.
    settings = property(lambda self: self.status.settings)
    state = property(lambda self: self.status.state)
    failure_message = property(lambda self: self.status.failure)
    child_state = property(lambda self: self.status.child_state)
    child_pid = property(lambda self: self.status.child_pid)

    def snapshot(self) -> dict:
        """The worker for /health: the status, the launcher's template, and memory read
        now (each child's with its GPUs, when there are several)."""
        return health_view(self.status, self.launcher.health(), self.probe, self.gpu_procs)

    # --- the loop ------------------------------------------------------------------------

    def _refuse_late(self, job: Any, listener: JobListener) -> None:
        """A job that reached a supervisor whose loop has ended still gets its one result."""
        job_id = job.get("id") if isinstance(job, dict) else None
        s = self.settings
        result = failure(job_id if isinstance(job_id, str) else "unknown", JobState.FAILED,
                         Reason.REFUSED, "JobRefused", "the worker has stopped", s.worker_id,
                         s.hostname)
        self.metrics.loop.ended(result)      # the loop has ended: no other writer
        if isinstance(job_id, str):
            tracing.TRACES.ended(job_id)
        try:
            listener.on_result(result)
        except Exception:
            log.exception("a job listener failed")

    def _feed(self, event: E.Event) -> None:
        """One event into the core: the status is stale until recomputed, and the turn
        ends with a publish."""
        self._fresh = False
        self._dirty = True
        self._dispatcher.feed(event)

    def _loop(self) -> None:
        core, feed, pop = self.core, self._feed, self._events.pop
        fatal = None
        self._events.loop_ident = threading.get_ident()
        try:
            feed(E.Tick())
            while True:
                while (event := pop()) is not None:
                    if type(event) is Spawning:
                        self._spawn_answered(event)
                    else:
                        feed(event)
                if core.finished:
                    break
                if self._dirty:
                    self._publish()
                deadline = core.next_deadline()
                wake = self._next_wake(deadline) if self._polled or self._spawns.open \
                    else deadline
                asleep_at = self.clock()
                ready = self._sel.select(None if wake is None     # capped at 1 h:
                                         else min(3600.0, max(0.0, wake - asleep_at)))  # select's ms overflow
                if wake is not None and (late := self.clock() - max(wake, asleep_at)) > STALL_S:
                    feed(E.Resumed(late))     # it was stopped: skip that time, then read
                woken = [key.data[0] for key, _ in ready if key.data[1] == "exit"]
                gone = self._gone(woken) if woken or self._polled else ()
                for key, mask in ready:
                    host, what = key.data
                    if host is None:
                        self._events.woken()
                    elif what == "ctrl" and (not gone or host not in gone):
                        if mask & selectors.EVENT_WRITE:
                            host.flush()
                        if mask & selectors.EVENT_READ:
                            for event in host.read():
                                feed(event)
                for host in gone:     # its last messages come with its exit
                    del self._hosts[host.cid]
                    feed(host.exited())
                if self._spawns.open:
                    self._give_up_late_starts()
                # Events check the clocks too, but not when none came (or only a flush).
                if deadline is not None and deadline <= self.clock():
                    feed(E.Tick())
        except Exception as exc:    # noqa: BLE001 - even the guards failed: end it loudly
            fatal = f"the worker's supervisor failed: {type(exc).__name__}: {exc}"
            log.exception("supervisor loop failed")
            self._last_words(E.LoopFailed(fatal))
        finally:
            for host in self._hosts.values():   # after a fault, or a lost child never seen
                host.close()
            self._probe_stop.set()
            self.metrics.close()
            close = getattr(self.probe, "close", None)
            if close is not None:
                close()
            self._last_words(E.LoopEnded())
            self._publish()
            self._sel.close()
            for event in self._events.close():       # queued as the loop ended
                if type(event) is E.Submit:
                    self._refuse_late(event.job, event.listener)
                elif type(event) is Spawning and event.proc is not None:
                    event.proc.close()               # a child no one would watch
        if fatal is not None and self.on_fatal is not None:
            self.on_fatal(fatal)

    def _next_wake(self, deadline: float | None) -> float | None:
        """The nearest of the core's deadline, a start's bound, a host's next look."""
        times = [t for t in (deadline, self._spawns.next_deadline()) if t is not None]
        times.extend(h.check_at for h in self._polled)
        return min(times) if times else None

    def _gone(self, woken: list) -> dict:
        gone, launcher_lost = exited_hosts(woken, self._polled, self.clock())
        self._polled = [h for h in self._hosts.values()
                        if h.check_at is not None and h not in gone]
        if launcher_lost:
            self.launcher.template_lost("died while its children ran")
        return gone

    def _spawn_answered(self, spawning: Spawning) -> None:
        """A start's answer (spawns.py): a host and Spawned, or SpawnFailed."""
        event = self._spawns.outcome(spawning, self._watch)
        if event is not None:
            self._feed(event)

    def _watch(self, slot: int, cid: int, proc) -> None:
        pid = proc.pid

        def log_ids() -> tuple:      # a spare's or a retiring child's lines are no job's
            view = self.status.children[slot]
            return view.log_ids if view.pid == pid else ()
        host = self._hosts[cid] = ChildHost(slot, cid, proc, self._sel, log_ids,
                                            self.output_sink)
        if host.check_at is not None:
            self._polled.append(host)

    def _give_up_late_starts(self) -> None:
        for event in self._spawns.give_up_late(self.clock()):
            self._feed(event)

    def _last_words(self, event: E.Event) -> None:
        """A final event, straight to the core (no guard is left to recover with), on
        the system's clock (the given one may be what failed). If even that fails, each
        job still held is told it failed, here."""
        self._fresh = False
        try:
            self._dispatcher.apply(self.core.handle(event, time.monotonic()))
        except Exception:   # noqa: BLE001
            log.exception("the supervisor could not finish cleanly (%s)", type(event).__name__)
            for job in self.core.unfinished():
                self._refuse_late(job.job, job.listener)

    def _publish(self) -> None:
        self._dirty = False
        if not self._fresh:
            self.status = self.core.status()
            self._fresh = True
        if self._health is not None:
            self._health.update(self.status)
        with self._changed:
            self._changed.notify_all()
        if self.status.capacity != self._published_capacity:
            self._published_capacity = self.status.capacity
            for fn in self._capacity_watchers:
                try:
                    fn()
                except Exception:      # noqa: BLE001 - a watcher must not break the loop
                    log.exception("a capacity watcher failed")

    # --- effects: the loop's side of the core's actions (dispatch.Effects) ---------------

    def before(self) -> None:
        """A listener called now sees the state that led to its event."""
        if not self._fresh:
            self.status = self.core.status()
            self._fresh = True

    def send(self, action: A.Send) -> None:
        host = self._hosts.get(action.cid)
        if host is not None:
            msg = action.msg
            host.send(action.data, msg.job.get("id") if type(msg) is P.Run else None)

    def signal(self, action: A.Signal) -> None:
        host = self._hosts.get(action.cid)
        if host is not None:
            host.signal(action.sig, action.group)

    def settle(self, action: A.Settle) -> None:
        """Answer once the slot's GPUs have the last child's memory back (device_settle.py);
        the wait, when there is one, runs off the loop. After a lost child (need_mb), a
        wait that ends without the memory back answers whether the new child fits."""
        wait = device_settle.Wait(self.probe, self.gpu_procs, action)
        if wait.done():
            self._events.put(E.Settled(action.slot, action.cid,
                                       device_settle.used(self.probe, action.devices)))
            return

        def run():
            used, fits = wait.wait(self._probe_stop, self._stopping.is_set)
            self._events.put(E.Settled(action.slot, action.cid, used, fits))
        threading.Thread(target=run, daemon=True, name="gpu-worker-settle").start()

    def spawn(self, action: A.Spawn) -> None:
        """Start the child off the loop (spawns.py); its answer is a Spawning. A spare
        starts only if it fits beside the active child (spare_fit.py)."""
        if action.cause is StartCause.SPARE:
            fit = spare_fit.check(self.probe, action.active_pid, action.devices,
                                  action.vram_mb, self.gpu_procs)
            if not fit.ok:
                self._events.put(E.SpawnFailed(action.slot, action.cid, fit.text,
                                               transient=not fit.never,
                                               short_of_gpu=fit.short_of_gpu))
                return
        self.metrics.loop.started(action.cause.value)
        try:
            self._spawns.begin(action, self.target)
        except RuntimeError as exc:       # no thread now (a thread limit): a moment's failure
            self._events.put(E.SpawnFailed(action.slot, action.cid, f"RuntimeError: {exc}",
                                           transient=True))

    def read_memory(self, action: A.ReadMemory) -> None:
        try:
            reading = _only(self.probe.read(action.pid), action.devices)
        except Exception as exc:
            log.warning("memory probe failed: %s", exc)
            reading = None
        self._events.put(E.MemoryRead(action.slot, action.cid, reading))

    def warm_off(self, action: A.WarmOff) -> None:
        self.launcher.warm_off(action.reason)

    def child_ready(self, action: A.ChildReady) -> None:
        self.metrics.loop.setup.observe(action.setup_s)

    def tell(self, action) -> None:
        try:
            if type(action) is A.Started:
                action.listener.on_start(action.job_id)
            elif type(action) is A.Progressed:
                action.listener.on_progress(action.job_id, action.value)
            else:
                action.listener.on_chunk(action.job_id, action.value)
        except Exception:
            log.exception("a job listener failed")

    def ended(self, action: A.Ended) -> None:
        """A job's one final record: counted, logged with its times, then told."""
        r = action.result
        self.metrics.loop.ended(r)
        level = logging.INFO if r.state is JobState.COMPLETED else logging.WARNING
        if log.isEnabledFor(level):          # a line per job: built only when shown
            vram = r.extra.get("peak_vram_mb")
            log.log(level, "job %s (%s)%s%s", r.state.value, r.reason.value, r.times_text(),
                    "" if vram is None else f", peak VRAM {vram:.0f} MiB",
                    extra={"job_id": r.job_id})
        try:
            action.listener.on_result(r)
        except Exception:
            log.exception("a job listener failed")
        if r.trace is not None:
            tracing.TRACES.ended(r.job_id)


def _only(reading, devices: tuple):
    """A probe's reading of one child's GPUs (any probe: a one-child worker asks for all)."""
    return reading.only(devices) if devices else reading
