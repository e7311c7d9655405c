"""One soak run of one mode: its processes up, the planned jobs sent at their times while
the scheduler injects the planned faults, then the faults stop, every process is brought
back, and the run waits for each accepted job's final report before it checks the bounds."""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import plan, procs
from .ledger import GRACE_S, Ledger


class NotMade(Exception):
    """The fault could not be made now (no process to make it to)."""


class Mode:
    name = ""
    fault_kinds: tuple = ()
    fault_gap = (0.8, 2.5)           # seconds between two faults
    counted = ""                     # the report that must come exactly once per job
    awaited: tuple = ()              # the reports a drain waits for (default: counted)
    run_bound = 1                    # runs a job may have under the contract
    contract = ""

    def __init__(self, folder: Path, ledger: Ledger, rng: random.Random):
        self.folder, self.ledger, self.rng = folder, ledger, rng
        self.folder.mkdir(parents=True, exist_ok=True)
        self.problems: list = []     # (None, what): a process that misbehaved on its own
        self._stalls: list = []
        self.runs_file = folder / "runs.log"
        self.children_file = folder / "children.pids"
        # the caller's own WORKER_* and RUNPOD_* settings would change the bounds checked
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("WORKER_", "RUNPOD_"))}
        self.env = {"SOAK_RUNS": str(self.runs_file),
                    "SOAK_CHILDREN": str(self.children_file),
                    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "WORKER_CHILDREN": "2",
                    "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": str(GRACE_S),
                    "WORKER_RETURN_AGGREGATE_STREAM": "true"}

    # each mode: start, warm, send, inject, restore, poll, collect, steady, logs, close
    def poll(self) -> None:
        """Bring in final reports the mode must fetch (called while draining)."""

    def collect(self) -> list:
        """Final reports read at the end; violations only the mode can see."""
        return []

    def figures(self) -> list:
        """Lines of figures only this mode has."""
        return []

    # faults every mode shares
    def _target(self, find, what: str) -> list:
        """The processes `find` names, waited for up to 2 s (one may be starting)."""
        deadline = time.monotonic() + 2.0
        while not (pids := find()):
            if time.monotonic() > deadline:
                raise NotMade(f"no {what} alive")
            time.sleep(0.05)
        return sorted(pids)

    def running(self, procs_by_name: dict, name: str):
        """The process `name`, waited for up to 4 s (a restart the soak made may be on
        its way)."""
        deadline = time.monotonic() + 4.0
        while procs_by_name[name].poll() is not None:
            if time.monotonic() > deadline:
                raise NotMade(f"{name} is not running")
            time.sleep(0.05)
        return procs_by_name[name]

    def kill_child(self, *parents: int) -> str:
        """SIGKILL a handler's child of one of `parents` (the first that has one)."""
        pid = self.rng.choice(self._target(lambda: next(
            (c for p in parents if (c := procs.handler_children(p, self.children_file))),
            []), "child"))
        with self.ledger.lock:
            self.ledger.killed.add(pid)
        procs.kill(pid)
        return f"SIGKILL child {pid}"

    def kill_forkserver(self, *parents: int) -> str:
        pid = self._target(lambda: next(
            (f for p in parents if (f := procs.forkservers(p, self.children_file))),
            []), "forkserver")[0]
        procs.kill(pid)
        return f"SIGKILL forkserver {pid}"

    def stall(self, parent: int, seconds: float) -> str:
        self._stalls.append(procs.stall(parent, seconds))
        return f"SIGSTOP {parent} for {seconds:.1f} s"

    def end_stalls(self) -> None:
        for t in self._stalls:
            t.join()

    def exited(self, name: str, proc) -> None:
        """A process the soak did not stop has exited: a broken bound, then restarted."""
        self.problems.append((None, f"{name} exited by itself with {proc.returncode}"))


def _send(mode: Mode, job) -> None:
    # whatever goes wrong in the client is that job's refusal
    try:
        mode.send(job)
    except Exception as exc:       # noqa: BLE001 - an answer the client could not read
        mode.ledger.refuse(job.token, f"{type(exc).__name__}: {exc}")


def run(mode_cls, seed: int, seconds: float, rate: float, folder: Path,
        drain_s: float = 60.0) -> tuple:
    """(ledger, samples before, samples after, violations, logs, the mode's figures)."""
    rng = random.Random(f"{seed}:{mode_cls.name}")
    jobs = plan.jobs(rng, mode_cls.name, seconds, rate)
    faults = plan.faults(rng, seconds, mode_cls.fault_kinds, mode_cls.fault_gap)
    ledger = Ledger(mode_cls.name, seed, jobs, mode_cls.counted, mode_cls.run_bound,
                    mode_cls.awaited)
    mode = mode_cls(folder / mode_cls.name, ledger, random.Random(f"{seed}:{mode_cls.name}:x"))
    try:
        mode.start()
        mode.warm()
        before = {name: procs.sample(pid) for name, pid in mode.steady().items()}
        ledger.t0 = time.monotonic()
        stop = threading.Event()

        def scheduler():
            for at, kind in faults:
                if stop.wait(max(0.0, at - ledger.now())):
                    return
                try:
                    ledger.fault(kind, mode.inject(kind))
                except NotMade as exc:
                    ledger.fault(f"skipped:{kind}", str(exc))
                except Exception as exc:       # noqa: BLE001 - a fault that could not be made
                    ledger.fault(f"skipped:{kind}", f"{type(exc).__name__}: {exc}")
        chaos = threading.Thread(target=scheduler, daemon=True)
        chaos.start()
        with ThreadPoolExecutor(32) as pool:
            for job in jobs:
                time.sleep(max(0.0, job.at - ledger.now()))
                pool.submit(_send, mode, job)
            stop.set()
            chaos.join()
            mode.restore()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            mode.poll()
            if not ledger.pending():
                break
            time.sleep(0.2)
        extra = mode.collect() + mode.problems
        ledger.read_runs(mode.runs_file)
        after = {name: procs.sample(pid) for name, pid in mode.steady().items()}
        return ledger, before, after, ledger.violations(extra), mode.logs(), mode.figures()
    finally:
        mode.close()
