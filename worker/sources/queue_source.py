"""What every queue source does the same way: run, take while there is room, stop at a
signal within the grace, and hand each taken job to the supervisor with a report guaranteed.

A queue (the RunPod job-take, a Redis stream) fills in `take` (one take of up to `room`
jobs, each handed on with `submit`), `held` (the jobs it holds until their final
report), the job events (`on_result` and the rest, from JobListener), and what its start
and its stop add: `prepare`, `started`, `leave_take`, `release_rest`, `close`. The base
owns the threads' shape:

- run: SIGTERM/SIGINT through the source host, the supervisor started, the take loop in a
  thread, the main thread waiting until a signal or until the worker cannot run jobs;
- the take loop: waits for room (the supervisor's capacity less what is held: a free slot
  or a new child wakes it), takes, again; a take that raises ends only that take;
- the stop: no new take; the jobs held have WORKER_SHUTDOWN_GRACE to end and be
  reported; then the children are stopped and the source closes its deliveries;
- submit: a job handed to the supervisor, or, if that fails, reported FAILED at once —
  never a taken job without a report.
"""
from __future__ import annotations

import abc
import logging
import threading
import time
from typing import Any

from ..backoff import Backoff
from ..config import Settings
from ..jobs import JobResult, JobState, Reason, failure
from ..parent.supervisor import JobListener, Supervisor, WorkerState
from .host import SourceHost

ROOM_WAIT_S = 0.25       # the take loop looks at the room at least this often


class QueueSource(JobListener, abc.ABC):
    log = logging.getLogger("worker")
    worker_name = ""          # who reports a job this source refuses (the queue's own name)

    def __init__(self, settings: Settings, target, supervisor: Supervisor | None = None):
        self.host = SourceHost(settings, target, supervisor)
        self.sup = self.host.sup
        self.stopping = threading.Event()       # a signal came (or the worker failed)
        self.taking_done = threading.Event()    # the take loop has ended
        self._cond = threading.Condition()      # guards what is held; notified on changes
        self.sup.on_capacity(self._room_changed)     # a fresh child: take at once

    @property
    def settings(self) -> Settings:
        """The supervisor's effective settings (start() keys included): never a copy."""
        return self.sup.settings

    # --- what a queue fills in --------------------------------------------------------------

    @abc.abstractmethod
    def held(self) -> int:
        """Jobs taken and not yet reported (they count against the room)."""

    @abc.abstractmethod
    def take(self, room: int) -> bool:
        """One take of up to `room` jobs, each handed on (`submit`) or reported. Waits of
        its own (backoff after an error) are on `stopping`. False: take no more."""

    def signal_meaning(self) -> str:
        return f"no new jobs; running jobs have {self.settings.shutdown_grace:g}s to finish"

    def prepare(self) -> bool:
        """Before the supervisor starts (e.g. reach the queue); False: do not run."""
        return True

    def started(self) -> None:
        """The supervisor has started: the source's own threads (deliveries, heartbeat)."""

    def leave_take(self, deadline: float) -> None:
        """At a signal, before the grace: end a take in flight."""

    def release_rest(self) -> None:
        """After the grace: what is still held."""

    @abc.abstractmethod
    def close(self, failed: bool) -> int:
        """The children have stopped: deliver what is left, say goodbye; the exit code
        (`failed`: the worker could not run jobs)."""

    # --- running ------------------------------------------------------------------------------

    def run(self) -> int:
        self.host.handle_signals(lambda name: self.stopping.set(), self.signal_meaning())
        if not self.prepare():
            return 0 if self.stopping.is_set() else 2
        self.host.start()
        self.started()
        self.thread(self._take_loop, "take")
        while not self.stopping.wait(0.5):
            if self.sup.state is not WorkerState.RUNNING:
                break
        return self.shutdown()

    def thread(self, fn, name: str) -> threading.Thread:
        t = threading.Thread(target=fn, name=f"gpu-worker-{name}", daemon=True)
        t.start()
        return t

    def shutdown(self) -> int:
        self.stopping.set()
        deadline = time.monotonic() + self.settings.shutdown_grace
        self.leave_take(deadline)
        self.wait_for_held(deadline)
        self.release_rest()
        self.host.stop(0)
        return self.close(self.sup.state in (WorkerState.SETUP_FAILED, WorkerState.BROKEN))

    def wait_for_held(self, deadline: float) -> bool:
        """Wait until the take loop has ended and nothing is held, or `deadline`."""
        with self._cond:
            return self._cond.wait_for(lambda: self.taking_done.is_set() and not self.held(),
                                       max(0.0, deadline - time.monotonic()))

    # --- taking jobs -----------------------------------------------------------------------

    def room(self) -> int:
        return max(0, self.sup.status.capacity - self.held())

    def _room_changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _take_loop(self) -> None:
        failing = Backoff(0.5, 10.0)
        try:
            while not self.stopping.is_set():
                with self._cond:     # wait for a free slot (a final report notifies)
                    self._cond.wait_for(lambda: self.room() > 0 or self.stopping.is_set(),
                                        ROOM_WAIT_S)
                room = self.room()
                if room <= 0 or self.stopping.is_set():
                    continue
                try:
                    if not self.take(room):
                        break
                    failing.reset()
                except Exception:     # noqa: BLE001 - a take's fault ends that take only
                    wait = failing.next()
                    self.log.exception("taking jobs failed; taking again in %.1fs", wait)
                    self.stopping.wait(wait)
        finally:
            self.taking_done.set()
            with self._cond:
                self._cond.notify_all()

    def submit(self, job_id: str, job: dict, *args: Any, **kwargs: Any) -> None:
        """Hand a taken job to the supervisor (a job it refuses, e.g. without input, is
        reported there); if handing it over fails, it is reported FAILED here."""
        self.log.info("job taken", extra={"job_id": job_id})
        try:
            self.sup.submit(job, self, *args, **kwargs)
        except Exception as exc:       # noqa: BLE001 - never a taken job without a report
            self.log.exception("job could not be handed to the supervisor",
                               extra={"job_id": job_id})
            self.on_result(self.refused(job_id, f"the worker could not accept this job: "
                                                f"{exc}"))

    def refused(self, job_id: str, why: str) -> JobResult:
        """A job this source could not run: FAILED, reported by this worker."""
        return failure(job_id, JobState.FAILED, Reason.REFUSED, "JobRefused", why,
                       self.worker_name, self.settings.hostname)
