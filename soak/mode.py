"""One soak run of one mode: its processes up, the planned jobs sent at their times while
the scheduler injects the planned faults, then the faults stop, every process is brought
back, and the run waits for each accepted job's final report before it checks the bounds."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import plan, procs
from .ledger import Ledger


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
        self.runs_file = folder / "runs.log"
        self.children_file = folder / "children.pids"
        self.env = {"SOAK_RUNS": str(self.runs_file),
                    "SOAK_CHILDREN": str(self.children_file),
                    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "WORKER_CHILDREN": "2",
                    "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": "5",
                    "WORKER_RETURN_AGGREGATE_STREAM": "true"}

    # each mode: start, warm, send, inject, restore, poll, collect, steady, logs, close
    def poll(self) -> None:
        """Bring in final reports the mode must fetch (called while draining)."""

    def collect(self) -> list:
        """Final reports read at the end; violations only the mode can see."""
        return []

    # faults every mode shares
    def kill_child(self, parent: int) -> str:
        pids = procs.handler_children(parent, self.children_file)
        if not pids:
            return "no child alive"
        pid = self.rng.choice(sorted(pids))
        procs.kill(pid)
        return f"SIGKILL child {pid} of {parent}"

    def kill_forkserver(self, parent: int) -> str:
        pids = procs.forkservers(parent, self.children_file)
        if not pids:
            return "no forkserver alive"
        procs.kill(pids[0])
        return f"SIGKILL forkserver {pids[0]} of {parent}"

    def stall(self, parent: int, seconds: float) -> str:
        self._stalls = getattr(self, "_stalls", []) + [procs.stall(parent, seconds)]
        return f"SIGSTOP {parent} for {seconds:.1f} s"

    def end_stalls(self) -> None:
        for t in getattr(self, "_stalls", []):
            t.join()


def run(mode_cls, seed: int, seconds: float, rate: float, folder: Path,
        drain_s: float = 60.0) -> tuple:
    """(ledger, samples before, samples after, violations)."""
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
                    detail = mode.inject(kind)
                except Exception as exc:       # noqa: BLE001 - a fault that could not be made
                    detail = f"not injected: {type(exc).__name__}: {exc}"
                ledger.fault(kind, detail)
        chaos = threading.Thread(target=scheduler, daemon=True)
        chaos.start()
        with ThreadPoolExecutor(32) as pool:
            for job in jobs:
                time.sleep(max(0.0, job.at - ledger.now()))
                pool.submit(mode.send, job)
            stop.set()
            chaos.join()
            mode.restore()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            mode.poll()
            if not ledger.pending():
                break
            time.sleep(0.2)
        extra = mode.collect()
        ledger.read_runs(mode.runs_file)
        after = {name: procs.sample(pid) for name, pid in mode.steady().items()}
        return ledger, before, after, ledger.violations(extra), mode.logs()
    finally:
        mode.close()
