"""Everything a soak run saw, per job, and the contract's bounds checked against it.

A job is known by its token (the soak's name for it, in its input); the service names
it by an id. Finals come from the mode's record of reports (webhooks on the local API,
the stand-in queue's job-done posts on RunPod, the job's record on Redis), runs from the
handler's own log (soak/handler.py), faults from the scheduler."""
from __future__ import annotations

import collections
import re
import statistics
import threading
import time
from dataclasses import dataclass, field

from .plan import EXPECTED, PlannedJob, expected_output

FINAL_STATES = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}
TOKEN = re.compile(r"\b(?:local|runpod|redis)-\d+\b")     # plan.jobs names them so


GRACE_S = 5        # WORKER_SHUTDOWN_GRACE in every mode (mode.py)
# a stopped worker's last reports come within its grace and its results' flush time
STOP_S = GRACE_S + 15.0 + 5.0


@dataclass
class Entry:
    job: PlannedJob
    sent_at: float | None = None
    ids: list = field(default_factory=list)
    finals: list = field(default_factory=list)      # (t, source, state, output or error)
    runs: list = field(default_factory=list)        # (job id, pid)
    notes: list = field(default_factory=list)       # (t, text)
    cancel_asked: float | None = None
    refused: str | None = None                     # never accepted: why (the client knows)

    def first_final(self):
        return min(self.finals, key=lambda f: f[0]) if self.finals else None


class Ledger:
    def __init__(self, mode: str, seed: int, plan: list, counted: str, run_bound: int,
                 awaited: tuple = ()):
        """counted: the source whose reports must number exactly one per job; awaited:
        the sources a drain waits for (the counted one by default)."""
        self.mode, self.seed, self.counted, self.run_bound = mode, seed, counted, run_bound
        self.awaited = awaited or (counted,)
        self.awaited += tuple(a + "?" for a in self.awaited)
        self.t0 = time.monotonic()
        self.jobs = {j.token: Entry(j) for j in plan}
        self.by_id: dict = {}
        self.orphan_finals: dict = collections.defaultdict(list)   # id -> finals, no token
        self.faults: list = []                        # (t, kind, detail); kind "skipped:…"
        self.killed: set = set()                      # child pids the soak SIGKILLed
        self.malformed: list = []                     # reports that were not a report
        self.stopped: list = []                       # (t, worker id) the soak SIGTERMed
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- what happened -------------------------------------------------------------------

    def sent(self, token: str) -> None:
        with self.lock:
            self.jobs[token].sent_at = self.now()

    def accepted(self, token: str, job_id: str) -> None:
        with self.lock:
            entry = self.jobs[token]
            if job_id not in entry.ids:
                entry.ids.append(job_id)
            self.by_id[job_id] = token
            entry.finals += self.orphan_finals.pop(job_id, [])
            entry.notes.append((self.now(), f"accepted as {job_id}"))

    def refuse(self, token: str, why: str) -> None:
        with self.lock:
            self.jobs[token].refused = why

    def note(self, token: str, text: str) -> None:
        with self.lock:
            self.jobs[token].notes.append((self.now(), text))

    def cancel_asked(self, token: str) -> None:
        with self.lock:
            self.jobs[token].cancel_asked = self.now()

    def final(self, job_id: str, source: str, state: str, detail, at: float | None = None):
        record = (self.now() if at is None else at, source, state, detail)
        with self.lock:
            token = self.by_id.get(job_id)
            if token is None:
                self.orphan_finals[job_id].append(record)
            else:
                self.jobs[token].finals.append(record)

    def fault(self, kind: str, detail: str) -> None:
        with self.lock:
            self.faults.append((self.now(), kind, detail))

    def read_runs(self, path) -> None:
        """The handler's log: "<token> <job id> <pid>" per run."""
        try:
            lines = open(path).read().splitlines()
        except FileNotFoundError:
            lines = []
        with self.lock:
            for line in lines:
                token, job_id, pid = line.split()
                if token in self.jobs:          # not a warm-up job
                    self.jobs[token].runs.append((job_id, int(pid)))

    # --- what it means -------------------------------------------------------------------

    def submitted(self) -> list:
        return [e for e in self.jobs.values() if e.ids]

    def pending(self) -> list:
        """Accepted jobs with no final report yet from the sources the mode waits for."""
        with self.lock:
            return [e for e in self.jobs.values() if e.ids and not any(
                f[1] in self.awaited for f in e.finals)]

    def violations(self, extra=()) -> list:
        """(token or None, what): every bound the run broke."""
        out = list(extra)
        out += [(None, f"a report that is not one: {m}") for m in self.malformed]
        for job_id, finals in self.orphan_finals.items():
            out.append((None, f"a final for id {job_id} that no job was given: {finals[0]}"))
        for e in self.jobs.values():
            out += [(e.job.token, v) for v in self._job_violations(e)]
        return out

    def _job_violations(self, e: Entry) -> list:
        out = []
        if len(e.ids) > 1:
            out.append(f"{len(e.ids)} ids for one job: {e.ids}")
        if not e.ids:
            out.append(f"never accepted: {e.refused or 'no answer with its id'}")
            if e.runs:
                out.append(f"never accepted, yet it ran {len(e.runs)} time(s)")
            return out
        if not e.finals:
            out.append("LOST: accepted, no final state reported")
        counted = self.counted_reports(e)
        platform = [f for f in e.finals if f[1] == "platform"]
        if counted > 1 or (not platform and e.finals and counted != 1):
            out.append(f"{counted} final records ({self.counted}), not 1")
        # the platform's stop and a report the worker sent before it heard of it may differ
        states = {f[2] for f in e.finals if f[1] != "platform"}
        if len(states) > 1:
            out.append(f"final states disagree: {sorted(states)}")
        for f in e.finals:
            out += self._wrong_final(e, f)
        if len(e.runs) > self.run_bound:
            out.append(f"ran {len(e.runs)} times (bound {self.run_bound})")
        strangers = {j for j, _ in e.runs} - set(e.ids)
        if strangers:
            out.append(f"a run under an id not its own: {sorted(strangers)}")
        if e.finals and not e.runs and e.first_final()[2] not in ("CANCELLED", "FAILED"):
            out.append(f"{e.first_final()[2]} without a run")
        return out

    def counted_reports(self, e: Entry) -> int:
        """Reports of the counted source; one whose answer was cut (source + "?": the
        sender never heard it arrive, and sent it again) counts only if none was heard."""
        heard = sum(1 for f in e.finals if f[1] == self.counted)
        return heard or min(1, sum(1 for f in e.finals if f[1] == self.counted + "?"))

    def _wrong_final(self, e: Entry, final) -> list:
        t, source, state, detail = final
        if state not in FINAL_STATES:
            return [f"{source} reported {state!r}, not a final state"]
        allowed = {EXPECTED[e.job.kind]}
        if e.cancel_asked is not None:
            allowed.add("CANCELLED")
        explained = state == "FAILED" and self._failure_explained(e, str(detail))
        if explained:
            allowed.add("FAILED")
        if state not in allowed:
            return [f"{source} reported {state}; a {e.job.kind} job may end "
                    f"{sorted(allowed)} here ({str(detail)[:300]})"]
        if state == "COMPLETED" and detail != expected_output(e.job.kind, e.job.token):
            return [f"COMPLETED with another output: {str(detail)[:300]}"]
        others = set(TOKEN.findall(str(detail))) - {e.job.token}
        if others:
            return [f"{state} with another job's report ({sorted(others)[0]})"]
        if (e.job.kind == "fail" and state == "FAILED" and not explained
                and e.job.token not in str(detail)):
            return [f"FAILED without its own error: {str(detail)[:300]}"]
        return []

    def _failure_explained(self, e: Entry, text: str) -> bool:
        """A fault the soak made explains this FAILED, and the error says which: its child
        was SIGKILLed (a run of it in a child the soak killed, or a kill just before its
        report: the run may not have written its line yet); it was delivered too often
        (Redis: its workers were killed or stalled); or a worker's stop that the soak made
        refused or stopped it. Its time: its first report from the service itself (a
        record read at the end, or the platform's own cancel, is not when it ended)."""
        at = min([f[0] for f in e.finals if f[1] not in ("platform", "record")]
                 or [f[0] for f in e.finals])
        if "killed by SIGKILL" in text:      # its child was killed
            if e.runs:                       # a run of it in a child the soak killed
                return any(pid in self.killed for _, pid in e.runs)
            kills = [t for t, kind, _ in self.faults if kind == "child"]   # or one just
            return any(at - 5.0 <= t <= at for t in kills)     # begun, its line not written
        if re.search(r"the job was delivered \d+ times", text):    # Redis, after the soak
            return any(kind in ("worker_kill", "stall") and t <= at    # killed or stalled
                       for t, kind, _ in self.faults)                  # a worker
        if "shutting down" in text or "(shutdown)" in text:    # the worker the soak stopped,
            said = re.search(r'"worker_id": "([^"]+)"', text)    # in the grace after it
            return bool(said) and any(t <= at <= t + STOP_S and who == said.group(1)
                                      for t, who in self.stopped)
        return False

    # --- the report ----------------------------------------------------------------------

    def latencies_ms(self) -> list:
        out = []
        for e in self.jobs.values():
            f = e.first_final()
            if f and e.sent_at is not None and e.cancel_asked is None:
                out.append((f[0] - e.sent_at) * 1000)
        return sorted(out)

    def history(self, token: str, logs: dict) -> str:
        e = self.jobs[token]
        lines = [f"  job {token}: kind {e.job.kind}, via /{e.job.via}, "
                 f"cancel after {e.job.cancel_after}, ids {e.ids}"]
        events = [(t, "note", text) for t, text in e.notes]
        if e.sent_at is not None:
            events.append((e.sent_at, "sent", ""))
        if e.cancel_asked is not None:
            events.append((e.cancel_asked, "cancel", "asked"))
        events += [(t, f"final ({src})", f"{state} {str(d)[:200]}")
                   for t, src, state, d in e.finals]
        # the faults around its life: from its send to its last final report (all after
        # its send if none came)
        last = max([f[0] for f in e.finals] or [float("inf")])
        events += [(t, "fault", f"{kind}: {d}") for t, kind, d in self.faults
                   if (e.sent_at or 0) - 2 <= t <= last + 2]
        for t, what, text in sorted(events, key=lambda x: x[0]):
            lines.append(f"    {t:9.3f} s  {what:14} {text}")
        lines += [f"    run: id {j}, child pid {p}" for j, p in e.runs]
        names = re.compile("|".join(rf"(?<![\w-]){re.escape(n)}(?![\w-])"
                                    for n in [token, *e.ids]))
        for name, path in logs.items():
            try:
                text = open(path, errors="replace").read().splitlines()
            except FileNotFoundError:
                continue
            hits = [ln for ln in text if names.search(ln)]
            lines += [f"    [{name}] {ln[:300]}" for ln in hits[:40]]
        return "\n".join(lines)

    def summary(self) -> dict:
        subs = self.submitted()
        lat = self.latencies_ms()
        states = collections.Counter(e.first_final()[2] for e in subs if e.finals)
        runs = collections.Counter(len(e.runs) for e in subs)
        return {
            "planned": len(self.jobs), "submitted": len(subs),
            "refused": collections.Counter(e.refused[:80] for e in self.jobs.values()
                                           if e.refused),
            "faults": collections.Counter(k for _, k, _ in self.faults
                                          if not k.startswith("skipped:")),
            "skipped": collections.Counter(k[8:] for _, k, _ in self.faults
                                           if k.startswith("skipped:")),
            "lost": sum(1 for e in subs if not e.finals), "states": states,
            "finals": collections.Counter(self.counted_reports(e) for e in subs),
            "runs": runs,
            "p50": statistics.median(lat) if lat else None,
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
        }
