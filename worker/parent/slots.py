"""One place for a child: its GPUs, its restart breaker, and which child holds which role.

The core keeps one Slot per child the worker runs (placement.py decides how many and with
which GPUs). A slot holds its ACTIVE child (the one that runs jobs: from the moment the
core asks for it, through its set-up, to its exit), at most one SPARE (spares.py) and the
RETIRING children a spare replaced; each is a child.Child, whose own methods change it.
The slot decides what concerns the place: starting a child (settle, spawn, a start that
failed for a moment), its set-up, swapping in the spare, its clocks and stops, what an
exit or a lost child means for its breaker. The jobs and what happens to them (results,
timeouts, crash blame) are the core's (core.py); a slot returns a `Verdict` for the core
to act on. Every method that asks the loop for something returns those actions.
"""
from __future__ import annotations

import logging
import signal

from .. import backoff
from .. import protocol as P
from ..config import Settings
from . import recycling
from .actions import Settle, Signal, Spawn
from .breaker import RestartBreaker
from .causes import ExitCause, StartCause, StopCause, Verdict, VerdictKind
from .child import KILL_WAIT_S, Child, Phase, Role
from .jobbook import TrackedJob
from .spares import SparePolicy
from .status import ChildView

log = logging.getLogger("worker")
RETRY_BASE_S = 1.0            # a start that failed for a moment: tried again after 1, 2, 4...
RETRY_MAX_S = 30.0


class Slot:
    def __init__(self, index: int, devices: tuple, shared: bool, settings: Settings,
                 many: bool = False):
        self.index = index
        self.devices = devices         # its children's CUDA_VISIBLE_DEVICES; () = the parent's
        self.shared = shared           # another slot uses one of its GPUs
        self.many = many               # the worker has other slots (log lines say which)
        self.settings = settings       # the effective settings; the core keeps it current
        self.active: Child | None = None   # from the core's ask to its exit
        self.child: Child | None = None    # the active child once it has a process
        self.spare: Child | None = None
        self.retiring: list = []
        self.spares = SparePolicy()
        self.refresh_asked: str | None = None   # a refresh asked while a child was being
                                                # started: its first child with a process gets it
        self.previous_mb: float | None = None   # the last child's baseline (settle wait)
        self.previous_pid: int | None = None    # ... and its pid (NVML per process)
        self.breaker = RestartBreaker()
        self.ever_ready = False            # a child here has passed setup (and its checks)
        self.setup_failures = 0            # in a row, since a child here was last ready
        self.out: str | None = None        # out of service, and why: no child starts here
        self.revivable = False             # out before any slot was ready: tried once more
        self.spawns = 0
        self.next_cause = StartCause.FIRST  # why its next child starts
        self.last_run = 0                  # the run it got last: among idle slots, oldest first
        self.retry_at: float | None = None # a start failed for a moment: no new one before
        self.start_failures = 0            # such failures in a row
        self.start_error: str | None = None   # the last one, while retrying
        self.lost_count = 0                # children here declared lost (no exit after SIGKILL)
        self.lost_need_mb: float | None = None  # the last lost one's GPU memory: fit check
        self.code_files: set = set()       # reload mode: what its children's code is
        self.code: tuple = ()              # ... as published: (files, packages)

    # --- what it is ------------------------------------------------------------------------

    def use_settings(self, settings: Settings) -> None:
        """The effective settings changed (start() keys)."""
        self.settings = settings

    def env(self) -> dict:
        """What its child's environment gets: its GPUs and its index."""
        env = {"WORKER_CHILD_INDEX": str(self.index)}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        return env

    def _place(self, active: Child | None) -> None:
        """The active child changes: `child` is it once it has a process (read on every
        step, so kept rather than computed)."""
        self.active = active
        self.child = active if active is not None and not active.unborn else None

    @property
    def starting(self) -> int | None:
        """The number of the active child being started (settling or spawning)."""
        c = self.active
        return c.cid if c is not None and c.unborn else None

    @property
    def in_flight(self) -> dict:
        """The jobs in its active child, by run."""
        return self.active.jobs if self.active is not None else {}

    def holds(self, cid: int) -> bool:
        """Child `cid` is its active child, with a process."""
        return self.child is not None and self.child.cid == cid

    def owns(self, cid: int) -> Child | None:
        """Its child with that number, in any role."""
        for child in (self.active, self.spare, *self.retiring):
            if child is not None and child.cid == cid:
                return child
        return None

    def children(self) -> list:
        return [c for c in (self.active, self.spare, *self.retiring) if c is not None]

    @property
    def wants_child(self) -> bool:
        return self.active is None and self.out is None and self.retry_at is None \
            and not self.spare_coming

    @property
    def wants_spare(self) -> bool:
        """A spare now? Only beside a live active child, with none being built or retiring,
        past a failure's backoff, where the policy keeps one."""
        active = self.child
        return (active is not None and active.live and self.spare is None
                and not self.retiring and self.spares.retry_at is None
                and self.spares.enabled(self.settings, self.devices))

    @property
    def spare_coming(self) -> bool:
        """A spare is being started or set up, or waits: the slot waits for it rather
        than starting a third child."""
        return self.spare is not None and not self.spare.stopping

    @property
    def spare_ready(self) -> bool:
        return self.spare is not None and self.spare.promotable

    @property
    def busy_beside(self) -> bool:
        """A spare or a retiring child exists beside the active one."""
        return self.spare is not None or bool(self.retiring)

    def running_ids(self) -> tuple:
        return self.active.running_ids() if self.active is not None else ()

    def find(self, job_id: str) -> TrackedJob | None:
        return self.active.find(job_id) if self.active is not None else None

    def room(self) -> int:
        """Jobs its child would take now."""
        child = self.child
        return child.room if child is not None else 0

    def view(self, running: bool) -> ChildView:
        """As published in the Status (`running`: the worker takes jobs)."""
        c = self.child
        return ChildView(
            slot=self.index, devices=self.devices, pid=c.pid if c else None,
            state=c.state if c else None, mode=c.mode if c else None,
            concurrency=c.concurrency if c else 1,
            capacity=c.concurrency if running and c is not None and c.accepting else 0,
            preloaded=c.preloaded if c else (), jobs_run=c.jobs_run if c else 0,
            rss_bytes=c.rss if c else 0, torch=c.torch if c else None,
            baseline_mb=c.baseline_mb if c else 0.0, running=self.running_ids(),
            log_ids=c.log_ids if c else (), out=self.out, spawns=self.spawns,
            deaths=len(self.breaker.deaths), lost=self.lost_count, start_error=self.start_error,
            spare=self.spares.view(self.spare, self.retiring), code=self.code)

    def label(self) -> str:
        """' (slot 2, GPU-…)' for log lines, when the worker has several children."""
        if not self.many:
            return ""
        return f" (slot {self.index}" + (f", {','.join(self.devices)})" if self.devices
                                         else ")")

    # --- a child's start -------------------------------------------------------------------

    def ask_child(self, cid: int) -> Settle:
        """A new active child: first its GPUs' memory must be back. A GPU shared with
        another child moves with that child's work: nothing to wait for (the VRAM limit
        counts such a child's own reservation only)."""
        previous, self.previous_mb = self.previous_mb, None
        need, self.lost_need_mb = self.lost_need_mb, None
        gone, self.previous_pid = self.previous_pid, None
        self._place(Child(cid, self.index))
        return Settle(self.index, cid, self.devices, None if self.shared else previous,
                      need, gone)

    def ask_spare(self, cid: int) -> Spawn:
        """A spare beside the live active child; the fit check (spare_fit.py) needs that
        child's pid, GPUs and peak VRAM."""
        active = self.active
        self.spare = Child(cid, self.index, Role.SPARE, Phase.SPAWNING)
        beside = {"WORKER_SPARE_BESIDE": str(active.pid)}     # child/beside.py
        return Spawn(self.index, cid, self.settings, {**self.env(), **beside},
                     cause=StartCause.SPARE, active_pid=active.pid, devices=self.devices,
                     vram_mb=max(active.peak_vram_mb,
                                 (active.torch or {}).get("reserved_mb", 0.0)))

    def settled(self, used_mb: float) -> Spawn:
        """Its GPUs have their memory back: the active child's process starts."""
        self.active.settled(used_mb)
        return Spawn(self.index, self.active.cid, self.settings, self.env(),
                     checks=not self.ever_ready,
                     cause=self.next_cause if self.spawns else StartCause.FIRST)

    def give_up_start(self) -> None:
        """The active child being started will not start (not now, or a fault)."""
        if self.starting is not None:
            self._place(None)

    def spawned(self, cid: int, pid: int, now: float) -> list:
        s = self.settings
        if self.spare is not None and self.spare.cid == cid and self.spare.unborn:
            self.spare.spawned(pid, now, s.setup_timeout)
            self.spares.spawned()
            return []
        if self.starting != cid:     # a start given up on (recover): not ours to keep
            return [Signal(signal.SIGKILL, cid, group=True)]
        self.active.spawned(pid, now, s.setup_timeout)
        self._place(self.active)
        if self.refresh_asked is not None:
            self.active.replace_when_idle(self.refresh_asked, StartCause.REFRESH)
            self.refresh_asked = None
        self.spawns += 1
        self.start_failures, self.start_error = 0, None
        return []

    def spawn_failed(self, cid: int, error: str, transient: bool, short_of_gpu: bool,
                     now: float) -> Verdict | None:
        """A start failed: a spare's backs off; the active child's is tried again after a
        backoff when it failed for a moment, and is a setup failure otherwise."""
        if self.spare is not None and self.spare.cid == cid and self.spare.unborn:
            self.spare = None
            if transient:      # it does not fit, or not now
                self.spares.not_now(error, short_of_gpu, now)
            else:
                self.spares.failed(error, now)
            return None
        if self.starting != cid:
            return None
        self._place(None)
        if not transient:
            return Verdict(VerdictKind.SETUP_FAILED,
                           f"the worker process could not be started: {error}")
        self.start_failures += 1
        self.start_error = error
        delay = backoff.delay(self.start_failures, RETRY_BASE_S, RETRY_MAX_S)
        self.retry_at = now + delay
        log.warning("could not start a worker process%s (%d in a row): %s; trying again in "
                    "%.0fs", self.label(), self.start_failures, error, delay)
        verdict = self._death(now, f"could not start or died before finishing a job, "
                                   f"within {self.settings.restart_window:g}s (last: "
                                   f"{error}); not trying again")
        if verdict is not None:
            self.retry_at = None
        return verdict

    def _death(self, now: float, text: str) -> Verdict | None:
        """A death counts towards the breaker; a Verdict when that trips it."""
        s = self.settings
        self.breaker.record(now, s.restart_window)
        return self._tripped(text)

    def _tripped(self, text: str) -> Verdict | None:
        if not self.breaker.tripped(self.settings.restart_limit):
            return None
        return Verdict(VerdictKind.TRIPPED, f"{len(self.breaker.deaths)} worker processes "
                       f"in a row {text} (WORKER_RESTART_LIMIT)")

    def refresh(self, reason: str) -> None:
        """Replace its child once idle. One being started gets it once it has a process,
        even if this start is given up and another is asked (a refresh never falls
        between a child's start and its process)."""
        if self.child is not None:
            self.child.replace_when_idle(reason, StartCause.REFRESH)
        elif self.active is not None and self.refresh_asked is None:
            self.refresh_asked = reason

    # --- its children's messages -----------------------------------------------------------

    def setup_message(self, child: Child, msg: P.Message, now: float) -> bool:
        """Ready, SetupFailed or WarmRefused from its active child: True when the child
        has just become ready (the core does what that means for the worker)."""
        kind = type(msg)
        if kind is P.WarmRefused:
            child.refused_warm(msg.reason)
            return False
        self._learn_code(msg.code)
        if kind is P.SetupFailed:
            child.setup_failed(msg)
            return False
        if child.became_ready(msg, now):
            self.ever_ready, self.setup_failures = True, 0
            return True
        return False

    def spare_message(self, child: Child, msg: P.Message, now: float) -> list:
        """A message from its spare (not a heartbeat): the actions it calls for."""
        kind = type(msg)
        if kind is P.Ready and child.became_ready(msg, now):
            self.spares.ready()
            log.info("spare child %d ready in %.2fs", child.pid, now - child.started)
            return child.check_gpu()
        if kind is P.Checked:
            if child.checked(msg):
                return []
            return self.stop_spare(StopCause.GPU_UNHEALTHY, child.condemned, now, grace=0.0)
        if kind is P.SetupFailed:
            child.setup_failed(msg)
        elif kind is P.WarmRefused:
            child.refused_warm(msg.reason)
        return []

    def _learn_code(self, code) -> None:
        """Reload mode: the files its children ran (kept, so a file that broke an import
        stays watched) and the third-party packages they import."""
        if isinstance(code, dict) and len(self.code_files) < 5000:
            self.code_files.update(f for f in code.get("files") or () if isinstance(f, str))
            self.code = (tuple(sorted(self.code_files)),
                         tuple(p for p in code.get("packages") or () if isinstance(p, str)))

    def finished_a_job(self) -> None:
        """Its child finished a job: children here are not dying in a storm."""
        self.breaker.reset()

    def idle(self, child: Child) -> list:
        """Its active child ran its last job: ready again, and its memory is read."""
        return child.idle_check(recycling.watches_memory(self.settings), self.devices)

    def memory_read(self, cid: int, reading) -> None:
        """The reading its idle child's recycling check asked for (None: the probe failed)."""
        child = self.child
        if child is None or child.cid != cid or not child.memory_read():
            return
        if reading is not None and child.refresh_reason is None:
            child.replace_when_idle(recycling.memory_verdict(
                reading, child, self.settings,
                own_only=self.shared or self.busy_beside or not child.baseline_known),
                StartCause.MEMORY)

    def xid(self, label: str) -> list:
        """An application Xid: whatever spare there is (or is coming) passes the GPU check
        before it takes over."""
        return self.spare.owe_gpu_check(label) if self.spare is not None else []

    # --- its active child's jobs (the core decides them) -----------------------------------

    def start(self, tracked: TrackedJob, msg: P.Run, data) -> list:
        """Run a job in its child (the core chose it, gave it a run and encoded it)."""
        self.last_run = tracked.run
        return self.child.run(tracked, msg, data)

    def let_go(self) -> list:
        """The jobs of its active child, which it no longer holds (the caller ends them)."""
        return self.active.let_go() if self.active is not None else []

    # --- its children's exits ----------------------------------------------------------------

    def exited(self, child: Child, code: int | None, now: float,
               shutting_down: bool) -> tuple:
        """A child of this slot is gone: (its judged Exit, a Verdict when its death trips
        the breaker). A spare's death counts against the spare policy; the active child's
        place remembers what the next start needs. Its jobs are the caller's."""
        s = self.settings
        end = child.judge(code, s.setup_timeout, shutting_down)
        if child.role is Role.RETIRING:
            self.retiring.remove(child)
            self.spares.retired_gone(now)
            return end, None
        if child.role is Role.SPARE:
            self.spare = None
            if child.condemned is not None:
                self.spares.failed(child.condemned, now)
            elif child.stop_cause is None:       # (a set-up timeout condemned it)
                self.spares.failed(child.failure_text() or f"it {end.how}", now)
            return end, None
        self._place(None)
        self.previous_mb = child.baseline_mb if child.baseline_known else None
        self.previous_pid = child.pid
        self.next_cause = end.next_start
        if end.cause is ExitCause.WARM_REFUSED or end.cause.in_setup:
            return end, None
        if end.cause.is_death and child.jobs_run == 0:   # a storm: deaths before any job ends
            self.breaker.record(now, s.restart_window)
        if end.cause.is_death:
            return end, self._tripped(f"died before finishing a job, within "
                                      f"{s.restart_window:g}s; not respawning")
        return end, None

    def crashed_unspared(self) -> None:
        """Its active child crashed and its jobs are dealt with: counted when no spare was
        ready to take its place."""
        if not self.spare_ready:
            self.spares.replaced_without_spare(self.settings, self.devices)

    def lost(self, child: Child, now: float) -> Verdict | None:
        """Its active child did not exit after SIGKILL: let go of it (its host still reaps
        it if it ever exits; its jobs are the caller's). The next child starts once its
        memory is back or a fit check passes; it counts towards the breaker."""
        s = self.settings
        self._place(None)
        self.lost_count += 1
        self.previous_mb = child.baseline_mb if child.baseline_known else None
        self.previous_pid = child.pid
        self.lost_need_mb = (child.torch or {}).get("reserved_mb", 0.0)
        self.next_cause = StartCause.LOST
        log.error("child %d%s did not exit within %gs of SIGKILL (stuck in the kernel?): "
                  "declared lost; a new one starts in its place", child.pid, self.label(),
                  max(s.stop_grace, KILL_WAIT_S))
        return self._death(now, f"died, hung or were lost within {s.restart_window:g}s;"
                                " not respawning")

    def forget(self, action) -> None:
        """An action the guard dropped: a start it stood for begins again; a child waiting
        on it stops waiting."""
        if type(action) is Settle or type(action) is Spawn:
            if self.starting == action.cid:
                self._place(None)
            if self.spare is not None and self.spare.cid == action.cid \
                    and self.spare.unborn:
                self.spare = None
            return
        child = self.owns(getattr(action, "cid", -1))
        if child is not None:
            child.forget(action)

    def drop(self, cid: int, now: float, exited: bool = False) -> bool:
        """Let go of child `cid` whatever its phase (the guard: its exit was half-handled,
        or its start is given up); True if it was one of this slot's. A spare that died
        unasked still counts against the spare policy (so a fault on every spare's exit
        backs off and turns spares off, as any failure does)."""
        child = self.owns(cid)
        if child is None:
            return False
        child.lose()
        if child is self.active:
            self._place(None)
        elif child is self.spare:
            self.spare = None
            if exited and (child.condemned is not None or child.stop_cause is None):
                self.spares.failed(child.condemned or child.failure_text()
                                   or f"it {recycling.describe_exit(None)}", now)
        else:
            self.retiring.remove(child)
            if exited:
                self.spares.retired_gone(now)
        return True

    # --- the worker's verdicts on it ---------------------------------------------------------

    def put_out_of_service(self, why: str, revivable: bool = False) -> None:
        self.out, self.revivable = why, revivable

    def setup_failed(self) -> int:
        """A child here could not start: the failures in a row."""
        self.next_cause = StartCause.SETUP_FAILED
        self.setup_failures += 1
        return self.setup_failures

    def revive(self, cause: StartCause | None = None) -> None:
        """Back in service (out before any child was ready, or a reload)."""
        self.out, self.setup_failures, self.revivable = None, 0, False
        if cause is not None:
            self.next_cause = cause

    # --- its clocks and its stops ----------------------------------------------------------

    def resumed(self, now: float) -> None:
        """The worker itself was stopped: its children's clocks restart now (a heartbeat
        window; set-up has a second more)."""
        for child in self.children():
            child.resumed(now)

    def promote(self, now: float) -> None:
        """The spare takes the active child's place; the old one (if any) retires."""
        old, spare = self.child, self.spare
        if old is not None:
            old.retire()
            self.retiring.append(old)
        spare.promote()
        self._place(spare)
        self.spare = None
        self.spares.promoted()
        self.spawns += 1
        self.next_cause = StartCause.SPARE
        log.info("child %d%s takes over from %s (its spare, set up %.2fs before)",
                 spare.pid, self.label(), f"child {old.pid}" if old else "the child that "
                 "ended", now - spare.started)

    def check_clocks(self, now: float, shutdown_at: float | None) -> tuple:
        """Its children's clocks and a start's backoff: (actions, its active child when
        that was just declared lost)."""
        s = self.settings
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        actions = self._spare_clocks(now, keep=shutdown_at is None and self.out is None) \
            if self.spare is not None or self.retiring or self.spares.retry_at is not None \
            else []
        child = self.child
        if child is None:
            return actions, None
        if child.stopping:
            actions += child.escalate(now, s.stop_grace)
            return actions, child if child.phase is Phase.LOST else None
        order = child.due_stop(now, s.heartbeat_timeout, shutdown_at, s.setup_timeout)
        if order is not None:
            actions += self.stop_child(order.cause, order.text, now, order.interrupt)
        return actions, None

    def _spare_clocks(self, now: float, keep: bool) -> list:
        """The retiring children's and the spare's stop steps, the spare's set-up deadline
        and age; `keep` False drops the spare (shutdown, slot out)."""
        s = self.settings
        actions: list = []
        self.spares.tick(now)
        for child in list(self.retiring):
            actions += child.escalate(now, s.stop_grace)
            if child.phase is Phase.LOST:
                log.error("retired child %d did not exit after SIGKILL: let go", child.pid)
                self.retiring.remove(child)
        spare = self.spare
        if spare is None or spare.unborn:
            return actions
        if spare.stopping:
            actions += spare.escalate(now, s.stop_grace)
            if spare.phase is Phase.LOST:
                self.spare = None
        elif not keep:
            actions += self.stop_spare(StopCause.SHUTDOWN, "no spare kept", now)
        elif spare.phase is Phase.SETTING_UP and spare.setup_deadline is not None \
                and now >= spare.setup_deadline:
            spare.condemn(f"set-up did not finish within {s.setup_timeout:g}s")
            actions += self.stop_spare(StopCause.SETUP_TIMEOUT, "spare setup timeout", now)
        elif spare.promotable and s.spare_max_age > 0 \
                and now - spare.ready_at >= s.spare_max_age:
            actions += self.stop_spare(StopCause.REFRESH, f"the spare waited "
                                       f"{s.spare_max_age:g}s (WORKER_SPARE_MAX_AGE)", now)
        return actions

    def deadlines(self, heartbeat_timeout: float, shutdown_at: float | None) -> list:
        s = self.settings
        times = [self.retry_at] if self.retry_at is not None else []
        times += [c.stop_next for c in self.retiring]
        spare = self.spare
        if spare is not None and not spare.unborn:
            if spare.stopping:
                times.append(spare.stop_next)
            elif spare.phase is Phase.SETTING_UP:
                times.append(spare.setup_deadline)
            elif s.spare_max_age > 0 and spare.ready_at is not None:
                times.append(spare.ready_at + s.spare_max_age)
        if self.spares.retry_at is not None and spare is None:
            times.append(self.spares.retry_at)
        child = self.child
        if child is not None:
            times.append(child.deadline(heartbeat_timeout))
            if shutdown_at is not None and not child.stopping:
                times.append(shutdown_at)     # once stopping, its own steps are its clock
        return [t for t in times if t is not None]

    def refresh_if_idle(self, now: float) -> list:
        child = self.child
        if child is None or not child.replace_now:
            return []
        log.info("refreshing the worker process%s: %s", self.label(), child.refresh_reason)
        return self.stop_child(StopCause.REFRESH, f"refresh: {child.refresh_reason}", now)

    def stop_child(self, cause: StopCause, text: str, now: float,
                   interrupt: bool = False) -> list:
        """Stop the active child; after a stop that swaps, its ready spare takes over."""
        child = self.child
        actions = child.begin_stop(cause, text, now, self.settings.stop_grace, interrupt)
        if actions:
            log.info("stopping child %d: %s", child.pid, text)
        if cause.swaps_in_spare and not child.jobs:
            if child.restart_as is StartCause.REFRESH_COLD:   # the job wants what it wrote
                actions += self.stop_spare(StopCause.REFRESH, "a cold refresh was asked", now)
            elif self.spare_ready:
                self.promote(now)
            else:
                self.spares.replaced_without_spare(self.settings, self.devices)
        return actions

    def stop_spare(self, cause: StopCause, text: str, now: float,
                   grace: float | None = None) -> list:
        """Drop the spare (shutdown, a cold refresh, the slot out, too old, failed)."""
        spare = self.spare
        if spare is None or spare.unborn or spare.stopping:
            return []
        log.info("stopping spare child %d: %s", spare.pid, text)
        return spare.begin_stop(cause, text, now, self.settings.stop_grace
                                if grace is None else grace, interrupt=True)
