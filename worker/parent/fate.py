"""The worker's fate: running, until no child can start anywhere (SETUP_FAILED), a slot's
breaker trips with no other slot left or the GPU fails (BROKEN), or the loop ends
(STOPPED). Whatever ends it fails every job the worker holds, once.

Owned by the core (core.py), which calls it when a child cannot start or a slot must go
out of service; it reads the slots to know how many are left.
"""
from __future__ import annotations

import logging
from typing import Callable

from ..config import Settings
from ..jobs import Reason
from .causes import StartCause
from .jobbook import JobBook
from .slots import Slot
from .status import WorkerState

log = logging.getLogger("worker")


class WorkerFate:
    def __init__(self, slots: list, jobs: JobBook, settings: Callable[[], Settings]):
        self.state = WorkerState.RUNNING
        self.message: str | None = None      # why it cannot run jobs
        self._slots = slots
        self._jobs = jobs
        self._settings = settings

    def child_setup_failed(self, slot: Slot, message: str, details: str,
                           tail: tuple = ()) -> None:
        """A child could not start. With one child, the worker cannot run jobs. With
        several, the slot is tried again (up to restart_limit times in a row) once any
        child has been ready, and is put out of service otherwise; the worker fails only
        when no slot is left."""
        failures = slot.setup_failed()
        if len(self._slots) == 1:
            self.setup_failed(message, details, tail)
            return
        log.error("child%s failed to start (%d in a row): %s%s", slot.label(),
                  failures, message, "\n" + details.rstrip() if details else "")
        anyone_ready = any(s.ever_ready for s in self._slots)
        if anyone_ready and failures < self._settings().restart_limit:
            return                           # the core starts another
        self.slot_out(slot, message, WorkerState.SETUP_FAILED, details, tail,
                      revivable=not anyone_ready)

    def slot_out(self, slot: Slot, message: str, final: WorkerState, details: str = "",
                 tail: tuple = (), revivable: bool = False) -> None:
        """No child starts in `slot` again (`revivable`: unless a child elsewhere becomes
        ready); with no slot left, the worker takes `final`. For SETUP_FAILED, `message`
        is the set-up's own failure."""
        why = f"handler setup failed: {message}" if final is WorkerState.SETUP_FAILED \
            else message
        slot.put_out_of_service(why, revivable)
        left = sum(s.out is None for s in self._slots)
        if left:
            log.error("child%s is out of service (%s); %d of %d children go on",
                      slot.label(), why, left, len(self._slots))
        elif final is WorkerState.SETUP_FAILED:
            self.setup_failed(message, details, tail)
        else:
            self.broken(message, "WorkerBroken")

    def setup_failed(self, message: str, details: str, tail: tuple = ()) -> None:
        self.state = WorkerState.SETUP_FAILED
        self.message = message
        text = f"handler setup failed: {message}"
        if details:
            text += "\n" + details.rstrip()
        elif tail:
            text += "\nlast output of the worker process:\n" + "\n".join(tail)
        log.error(text)
        self.fail_all(Reason.REFUSED, "SetupFailed", f"handler setup failed: {message}",
                      details or "\n".join(tail))

    def revive(self) -> None:
        """Reload mode: a save after the handler failed to set up. Every slot may start a
        child again; the failure never counted against a breaker."""
        self.state, self.message = WorkerState.RUNNING, None
        for slot in self._slots:
            slot.revive(StartCause.RELOAD)

    def broken(self, message: str, error_type: str, advice: str = "") -> None:
        self.state, self.message = WorkerState.BROKEN, message
        log.error("%s%s", message, f": {advice}" if advice else "")
        self.fail_all(Reason.REFUSED, error_type, message)

    def loop_failed(self, text: str) -> None:
        """Even the loop's guard failed: nothing runs jobs any more."""
        self.state, self.message = WorkerState.BROKEN, text
        self.fail_all(Reason.REFUSED, "WorkerError", text)

    def loop_ended(self) -> None:
        if self.state is WorkerState.RUNNING:
            self.state = WorkerState.STOPPED

    def unavailable(self) -> str:
        """Why a job is refused now."""
        if self.state is WorkerState.RUNNING:
            return "the worker is shutting down"
        return f"the worker cannot run jobs: {self.message}"

    def fail_all(self, reason: Reason, error_type: str, text: str, details: str = "") -> None:
        self._jobs.fail_all([t for s in self._slots for t in s.let_go()], reason, error_type,
                            text, details)
