"""The one door into the core, shared by the supervisor's loop and the core's tests.

`Dispatcher.feed(event)` hands one event to `core.handle(event, now)` and carries out the
actions it returns through an `Effects` object: the loop's does I/O (supervisor.py), the
tests' records what was asked and answers like a loop would. Whatever goes wrong, in the
core or in an effect, is turned by one guard into the failure of what the event concerns
(`core.recover`): the job it named, the child it was about, or every child when the
fault was in the step that follows every event. Only if recovery fails too does the
exception leave `feed` (the loop then ends with the worker broken).

Actions whose outcome the core must hear (a settle, a spawn, a memory reading) are
answered by the effect queueing an event for a later turn: applying never re-enters the
core.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from .. import protocol as P
from . import actions as A

log = logging.getLogger("worker")


class Effects(Protocol):
    """What carrying out the core's actions means for one user of the core."""

    def send(self, action: A.Send) -> None: ...
    def signal(self, action: A.Signal) -> None: ...
    def settle(self, action: A.Settle) -> None: ...
    def spawn(self, action: A.Spawn) -> None: ...
    def read_memory(self, action: A.ReadMemory) -> None: ...
    def warm_off(self, action: A.WarmOff) -> None: ...
    def child_ready(self, action: A.ChildReady) -> None: ...
    def tell(self, action: Any) -> None: ...          # Started, Progressed, Chunked
    def ended(self, action: A.Ended) -> None: ...
    def before(self) -> None: ...                     # a non-empty list is about to run


_METHOD = {A.Send: "send", A.Signal: "signal", A.Settle: "settle", A.Spawn: "spawn",
           A.ReadMemory: "read_memory", A.WarmOff: "warm_off", A.ChildReady: "child_ready",
           A.Started: "tell", A.Progressed: "tell", A.Chunked: "tell", A.Ended: "ended"}


class Dispatcher:
    def __init__(self, core: Any, clock: Callable[[], float], effects: Effects):
        self.core = core
        self.clock = clock
        self._effects = effects
        self._run = {kind: getattr(effects, name) for kind, name in _METHOD.items()}

    def feed(self, event: Any) -> None:
        """One event through the core, its actions carried out; an exception fails what
        the event concerns and the core goes on."""
        try:
            self.apply(self.core.handle(event, self.clock()))
        except Exception as exc:    # noqa: BLE001 - the guard of every crossing into the core
            log.exception("internal error on %s", type(event).__name__)
            self.apply(self.core.recover(event, f"{type(exc).__name__}: {exc}", self.clock()))

    def apply(self, actions: list) -> None:
        """Carry out actions in order, except that a job's Run goes out first, so the child
        works while the rest is done (2 cores). An effect that raises does not keep the
        others from being carried out (a job's final report among them); the first
        exception is raised once all have been tried."""
        if not actions:
            return
        self._effects.before()
        run = self._run
        failed = None
        rest = []
        for action in actions:
            if type(action) is A.Send and type(action.msg) is P.Run:
                try:
                    run[A.Send](action)
                except Exception as exc:    # noqa: BLE001 - raised below, after the rest
                    failed = failed or exc
            else:
                rest.append(action)
        for action in rest:
            try:
                run[type(action)](action)
            except Exception as exc:        # noqa: BLE001
                failed = failed or exc
        if failed is not None:
            raise failed
