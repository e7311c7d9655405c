"""How the worker fails: a child that cannot start, a child's place taken out of service,
and the worker's final states (SETUP_FAILED, BROKEN) with every job held failed once.

A mixin of SupervisorCore (core.py), like child_events.py: it uses the core's slots, jobs
and settings.
"""
from __future__ import annotations

import logging

from ..jobs import Reason
from .slots import Slot
from .status import WorkerState

log = logging.getLogger("worker")


class Failures:
    def _child_setup_failed(self, slot: Slot, message: str, details: str,
                            tail: list = ()) -> None:
        """A child could not start. With one child, the worker cannot run jobs. With
        several, the slot is tried again (up to restart_limit times in a row) once any
        child has been ready, and is taken out of service otherwise; the worker fails only
        when no slot is left."""
        slot.next_cause = "setup_failed"
        if len(self.slots) == 1:
            self._setup_failed(message, details, tail)
            return
        slot.setup_failures += 1
        log.error("child%s failed to start (%d in a row): %s%s", slot.label(self.slots),
                  slot.setup_failures, message, "\n" + details.rstrip() if details else "")
        anyone_ready = any(s.ever_ready for s in self.slots)
        if anyone_ready and slot.setup_failures < self.settings.restart_limit:
            return                           # _ensure_children starts another
        self._slot_out(slot, f"handler setup failed: {message}", WorkerState.SETUP_FAILED,
                       details, tail)
        slot.revivable = not anyone_ready

    def _slot_out(self, slot: Slot, message: str, final: WorkerState, details: str = "",
                  tail: list = ()) -> None:
        slot.out = message
        left = sum(s.out is None for s in self.slots)
        if left:
            log.error("child%s is out of service (%s); %d of %d children go on",
                      slot.label(self.slots), message, left, len(self.slots))
        elif final is WorkerState.SETUP_FAILED:
            self._setup_failed(message.removeprefix("handler setup failed: "), details, tail)
        else:
            self.failure_message = message
            self._break(message, "WorkerBroken")

    def _setup_failed(self, message: str, details: str, tail: list = ()) -> None:
        self.state = WorkerState.SETUP_FAILED
        self.failure_message = message
        text = f"handler setup failed: {message}"
        if details:
            text += "\n" + details.rstrip()
        elif tail:
            text += "\nlast output of the worker process:\n" + "\n".join(tail)
        log.error(text)
        self._fail_all(Reason.REFUSED, "SetupFailed", f"handler setup failed: {message}",
                       details or "\n".join(tail))

    def _break(self, message: str, error_type: str, advice: str = "") -> None:
        self.state = WorkerState.BROKEN
        log.error("%s%s", message, f": {advice}" if advice else "")
        self._fail_all(Reason.REFUSED, error_type, message)

    def _unavailable(self) -> str:
        if self.state is WorkerState.RUNNING:
            return "the worker is shutting down"
        return f"the worker cannot run jobs: {self.failure_message}"

    def _fail_all(self, reason: Reason, error_type: str, text: str, details: str = "") -> None:
        running = [t for s in self.slots for t in s.in_flight.values()]
        for slot in self.slots:
            slot.in_flight.clear()
            slot.log_ids = ()
        self.jobs.fail_all(running, reason, error_type, text, details)
