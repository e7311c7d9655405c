"""Children start off the supervisor's loop, each start with a bound.

A launcher can hang: a stopped forkserver accepts a request and never answers, and
multiprocess reads the new pid with a blocking read. So each start runs in a thread of
its own; its answer (a `Spawning` with the process or the error) goes on the loop's command
queue, and the loop makes the child's host there. The loop also asks which starts are past
their bound (`overdue`): it declares that launcher dead, and the start fails for a moment.
A child that a given-up start still produces is closed, never adopted.
"""
from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from . import actions as A
from . import events as E
from .launcher import Launcher, transient

log = logging.getLogger("worker")


@dataclass(slots=True, eq=False)
class Spawning:
    action: A.Spawn
    deadline: float | None
    bound: float | None
    proc: Any = None                   # the ChildProcess, when it started
    error: str | None = None           # "Type: message", when it did not
    transient: bool = False            # ... for a moment (launcher.transient)
    trace: str = ""


class Spawns:
    def __init__(self, launcher: Launcher, post: Callable[[Any], bool],
                 clock: Callable[[], float]):
        """`post`: puts an answer on the loop's queue; False once the loop has ended."""
        self._launcher = launcher
        self._post = post
        self._clock = clock
        self.open: dict[int, Spawning] = {}    # by child number: asked, not answered

    def begin(self, action: A.Spawn, target: Any) -> None:
        """Start the child in a thread. RuntimeError: no thread could be started now."""
        bound = self._launcher.start_bound(action.settings)
        spawning = Spawning(action, None if bound is None else self._clock() + bound, bound)
        thread = threading.Thread(target=self._run, args=(spawning, target), daemon=True,
                                  name="gpu-worker-spawn")
        self.open[action.cid] = spawning
        try:
            thread.start()
        except BaseException:
            del self.open[action.cid]
            raise

    def _run(self, spawning: Spawning, target: Any) -> None:
        a = spawning.action
        try:
            spawning.proc = self._launcher.start(target, a.settings, checks=a.checks,
                                                 env=a.env)
        except BaseException as exc:     # noqa: BLE001 - every outcome goes to the loop
            # Text only: the exception's frames would hold what the failed start opened.
            spawning.error = f"{type(exc).__name__}: {exc}"
            spawning.transient = transient(exc)
            spawning.trace = traceback.format_exc()
            del exc
        if not self._post(spawning) and spawning.proc is not None:
            spawning.proc.close()        # the loop has ended: no one would watch it

    def outcome(self, spawning: Spawning, watch: Callable) -> E.Event | None:
        """What a start's answer means for the core: Spawned, once `watch(slot, cid,
        proc)` has made the child's host; SpawnFailed (transient or not); None for a
        start given up on."""
        if not self.answered(spawning):
            return None
        a, proc = spawning.action, spawning.proc
        if spawning.error is None:
            try:
                watch(a.slot, a.cid, proc)
            except Exception as exc:    # noqa: BLE001 - no host: nothing else could stop it
                log.exception("could not watch the worker process %d", proc.pid)
                proc.close()
                return E.SpawnFailed(a.slot, a.cid, f"{type(exc).__name__}: {exc}",
                                     transient(exc))
            log.debug("child %d starting (%s)", proc.pid, self._launcher.method)
            return E.Spawned(a.slot, a.cid, proc.pid)
        if spawning.transient:
            log.warning("could not start a worker process: %s", spawning.error)
        else:
            log.error("could not start the worker process: %s", spawning.trace.rstrip())
        return E.SpawnFailed(a.slot, a.cid, spawning.error, spawning.transient)

    def give_up_late(self, now: float) -> list:
        """Starts past their bound: that launcher is declared dead, each start fails for
        a moment (the core retries through the launcher's new template)."""
        out = []
        for spawning in self.overdue(now):
            reason = f"did not start a child within {spawning.bound:g}s"
            self._launcher.declare_dead(reason)
            out.append(E.SpawnFailed(spawning.action.slot, spawning.action.cid,
                                     f"the launcher {reason}; it is replaced",
                                     transient=True))
        return out

    def answered(self, spawning: Spawning) -> bool:
        """The loop has a start's answer: True if it still counts. A start given up on
        is closed here (its child, if it made one, is killed and released)."""
        if self.open.get(spawning.action.cid) is not spawning:
            if spawning.proc is not None:
                try:
                    spawning.proc.close()
                except Exception:     # noqa: BLE001 - the loop must go on
                    log.exception("could not close the late child %d", spawning.proc.pid)
            return False
        del self.open[spawning.action.cid]
        return True

    def next_deadline(self) -> float | None:
        times = [spawning.deadline for spawning in self.open.values()
                 if spawning.deadline is not None]
        return min(times) if times else None

    def overdue(self, now: float) -> list:
        """Starts past their bound, given up on now."""
        late = [spawning for spawning in self.open.values()
                if spawning.deadline is not None and now >= spawning.deadline]
        for spawning in late:
            del self.open[spawning.action.cid]
        return late
