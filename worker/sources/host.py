"""What every job source does the same way around its supervisor: build it, start it,
own the process's SIGTERM/SIGINT, and stop it within one bound.

A source (the RunPod queue, the local API, the one-shot test, and the queue engines to
come) makes a SourceHost, starts it, asks it to handle the signals with what a first
signal means for that source (stop taking jobs, let running ones finish), and stops it
with the grace it chose. A second signal does not wait for anything: every child's
process group is killed and the process exits 1.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

from ..config import Settings
from ..parent.supervisor import Supervisor

log = logging.getLogger("worker")

# A stop's last steps after the grace: Stop message, SIGTERM, SIGKILL (stop_grace apart)
# and the exit seen; then a margin for the loop's own end.
STOP_STEPS = 3
STOP_MARGIN_S = 5.0
# The stop's budget after a signal, what a platform's stop timeout must cover: the grace,
# the child's stop to SIGKILL (two steps), and this for what ended to go out. Deliveries
# still trying at its end are given up (logged), so the exit is 0 before the kill.
DELIVERY_S = 1.0


def exit_process(message: str) -> None:
    """on_fatal for the command-line sources: a worker whose supervisor loop died cannot
    run jobs and must not look alive; the child follows through its lifeline."""
    log.critical("%s; exiting", message)
    logging.shutdown()
    os._exit(70)

class SourceHost:
    def __init__(self, settings: Settings, target, supervisor: Supervisor | None = None,
                 one_child: bool = False):
        self.sup = supervisor or Supervisor(settings, target, on_fatal=exit_process,
                                            one_child=one_child)
        self.signalled = threading.Event()     # a first SIGTERM/SIGINT came
        self.signal_name = ""
        self.stop_by: float | None = None      # the stop's budget ends (after a signal)
        self._signals = 0

    def start(self) -> Supervisor:
        self.sup.start()
        return self.sup

    def handle_signals(self, on_first: Callable[[str], None], meaning: str) -> bool:
        """Own SIGTERM and SIGINT (from the main thread only; False elsewhere). The first
        is logged with its `meaning` for this source and calls `on_first(signal name)`
        from a thread of its own, so it may take locks a signal handler must not; a
        second kills every child's group and exits 1."""
        if threading.current_thread() is not threading.main_thread():
            return False

        def first():
            self.signalled.wait()
            log.info("%s: %s (a second signal stops at once)", self.signal_name, meaning)
            try:
                on_first(self.signal_name)
            except Exception:      # noqa: BLE001 - a source's callback must not hide the stop
                log.exception("stopping after %s failed", self.signal_name)
        threading.Thread(target=first, name="gpu-worker-signal", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals == 1:
            s = self.sup.settings
            self.stop_by = time.monotonic() + s.shutdown_grace + 2 * s.stop_grace + DELIVERY_S
            self.signal_name = signal.Signals(signum).name
            self.signalled.set()
            return
        log.warning("second signal: stopping at once")
        self.sup.kill_child_group(signal.SIGKILL)
        os._exit(1)

    def stop_bound(self, grace: float) -> float:
        """How long a stop with `grace` may take: the grace for running jobs, then each
        child's stop escalating to SIGKILL and its exit seen, and a margin."""
        return max(0.0, grace) + STOP_STEPS * self.sup.settings.stop_grace + STOP_MARGIN_S

    def budget_left(self, most: float) -> float:
        """Seconds a source may still spend delivering: `most`, cut to what is left of the
        stop's budget once a signal came."""
        if self.stop_by is None:
            return most
        return max(0.0, min(most, self.stop_by - time.monotonic()))

    def stop(self, grace: float = 0.0) -> bool:
        """Stop taking jobs, let running ones finish for `grace` seconds, stop the
        children; True once the supervisor has ended within its bound."""
        self.sup.stop(grace)
        return self.sup.join(self.stop_bound(grace))
