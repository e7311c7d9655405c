"""The chaos soak (`make soak`, soak/): a short run through every mode holds every bound,
and its checks are not a formality: a lost job, a second final report, a run too many, a
result handed to another job and a run under a stranger's id each break a bound."""
import random
import re
import subprocess
import sys

import pytest

from soak import plan
from soak.__main__ import MODES as MODE_CLASSES
from soak.ledger import Ledger
from tests.fleet_support import REDIS
from tests.support import ROOT

MODES = "local,runpod" + (",redis" if REDIS else "")


def test_a_short_soak_through_every_mode_loses_nothing():
    """Seconds, not minutes (make soak runs a minute per mode): every fault kind of each
    mode is made at least once, every job is accepted, and every bound holds."""
    out = subprocess.run([sys.executable, "-m", "soak", "--seed", "38", "--seconds", "12",
                          "--rate", "20", "--modes", MODES], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    assert "every bound held" in out.stdout
    for name in MODES.split(","):
        part = out.stdout.split(f"== {name}:")[1].split("\n== ")[0]
        assert "lost: 0;" in part and "refused to the client 0;" in part, part
        made = re.search(r"faults injected: (.*) \(\d+\)", part).group(1)
        kinds = {k.rsplit(" ", 1)[0] for k in made.split(", ")}
        assert kinds == set(MODE_CLASSES[name].fault_kinds), part


def _ledger(run_bound=1, counted="webhook"):
    jobs = plan.jobs(random.Random(1), "t", seconds=1, rate=20)
    ok = [j for j in jobs if j.kind == "ok" and j.cancel_after is None][:4]
    ledger = Ledger("t", 1, ok, counted, run_bound)
    for n, j in enumerate(ok):
        ledger.sent(j.token)
        ledger.accepted(j.token, f"id-{n}")
    return ledger, ok


def _well(ledger, job, n):
    ledger.final(f"id-{n}", "webhook", "COMPLETED", plan.expected_output("ok", job.token))
    ledger.jobs[job.token].runs.append((f"id-{n}", 100 + n))


def test_the_checks_hold_for_a_run_that_kept_the_contract():
    ledger, jobs = _ledger()
    for n, j in enumerate(jobs):
        _well(ledger, j, n)
    assert ledger.violations() == []
    # a killed child explains a FAILED that says so, reported just after the kill
    ledger.fault("child", "SIGKILL child 7")
    first = ledger.jobs[jobs[0].token]
    first.finals[0] = (ledger.now(), "webhook", "FAILED",
                       "the worker process killed by SIGKILL (out of memory?) during the job")
    first.runs.clear()                     # killed before its run wrote its line
    assert ledger.violations() == []
    # a worker the soak stopped refuses a job in its grace
    ledger.stopped.append((ledger.now(), "w2"))
    second = ledger.jobs[jobs[1].token]
    second.finals[0] = (ledger.now(), "webhook", "FAILED",
                        '{"error_message": "the worker is shutting down", "worker_id": "w2"}')
    assert ledger.violations() == []


def test_an_error_that_names_another_job_breaks_a_bound():
    jobs = plan.jobs(random.Random(1), "local", seconds=5, rate=20)
    fail = [j for j in jobs if j.kind == "fail" and j.cancel_after is None][:2]
    ledger = Ledger("local", 1, fail, "webhook", 1)
    for n, j in enumerate(fail):
        ledger.sent(j.token)
        ledger.accepted(j.token, f"id-{n}")
        ledger.jobs[j.token].runs.append((f"id-{n}", 100 + n))
        ledger.final(f"id-{n}", "webhook", "FAILED", f"the soak's failing job {fail[0].token}")
    assert ledger.violations() == [
        (fail[1].token, f"FAILED with another job's report ({fail[0].token})")]


def test_a_report_sent_again_because_its_answer_was_cut_counts_once():
    """The stand-in recorded a job-done post and then could not answer it (its connection
    cut): the worker never heard, and posted again. One report, as the platform keeps it;
    a second post after a heard one is a duplicate."""
    ledger, jobs = _ledger(counted="queue")
    for n, j in enumerate(jobs):
        ledger.final(f"id-{n}", "queue?", "COMPLETED", plan.expected_output("ok", j.token))
        ledger.final(f"id-{n}", "queue", "COMPLETED", plan.expected_output("ok", j.token))
        ledger.jobs[j.token].runs.append((f"id-{n}", 100 + n))
    assert ledger.violations() == []
    ledger.final("id-0", "queue", "COMPLETED", plan.expected_output("ok", jobs[0].token))
    assert [w for _, w in ledger.violations()] == ["2 final records (queue), not 1"]


def test_a_report_that_is_not_one_breaks_a_bound():
    ledger, jobs = _ledger()
    for n, j in enumerate(jobs):
        _well(ledger, j, n)
    ledger.malformed.append("webhook KeyError('id'): b'{\"job\": {}}'")
    assert [w for t, w in ledger.violations() if t is None][0].startswith("a report that")


@pytest.mark.parametrize("broken, expected", [
    ("lost", "LOST"),
    ("twice", "2 final records"),
    ("rerun", "ran 2 times"),
    ("swapped", "COMPLETED with another output"),
    ("stranger", "a run under an id not its own"),
    ("disagree", "final states disagree"),
    ("unplanned", "FAILED; a ok job may end ['COMPLETED']"),
    ("unexplained", "FAILED; a ok job may end ['COMPLETED']"),
    ("refused", "never accepted: 429"),
    ("unanswered", "never accepted: no answer with its id"),
    ("killed_elsewhere", "FAILED; a ok job may end ['COMPLETED']"),
    ("stopped_elsewhere", "FAILED; a ok job may end ['COMPLETED']"),
])
def test_each_broken_bound_is_named(broken, expected):
    ledger, jobs = _ledger()
    for n, j in enumerate(jobs[1:], 1):
        _well(ledger, j, n)
    job = jobs[0]
    if broken != "lost":
        _well(ledger, job, 0)
    entry = ledger.jobs[job.token]
    if broken == "twice":
        ledger.final("id-0", "webhook", "COMPLETED", plan.expected_output("ok", job.token))
    elif broken == "rerun":
        entry.runs.append(("id-0", 999))
    elif broken == "swapped":
        entry.finals[0] = (*entry.finals[0][:3], plan.expected_output("ok", jobs[1].token))
    elif broken == "stranger":
        entry.runs[0] = ("id-1", 100)
    elif broken == "disagree":
        ledger.final("id-0", "runsync", "FAILED", "boom")
    elif broken == "unplanned":
        entry.finals[0] = (entry.finals[0][0], "webhook", "FAILED", "boom")
    elif broken == "unexplained":       # a child was killed, but not this job's, long before
        ledger.fault("child", "SIGKILL child 5")
        ledger.killed.add(5)
        entry.finals[0] = (entry.finals[0][0] + 10, "webhook", "FAILED",
                           "the worker process killed by SIGKILL during the job")
    elif broken == "killed_elsewhere":  # a kill just before, of a child it did not run in
        ledger.fault("child", "SIGKILL child 5")
        ledger.killed.add(5)
        entry.finals[0] = (ledger.now(), "webhook", "FAILED",
                           "the worker process killed by SIGKILL during the job")
    elif broken == "stopped_elsewhere":  # w2 was stopped; w1 says it is shutting down
        ledger.stopped.append((ledger.now(), "w2"))
        entry.finals[0] = (ledger.now(), "webhook", "FAILED",
                           '{"error_message": "the worker is shutting down", "worker_id": "w1"}')
    elif broken == "unanswered":
        entry.ids.clear()
        entry.finals.clear()
        entry.runs.clear()
    elif broken == "refused":
        entry.ids.clear()
        entry.finals.clear()
        entry.runs.clear()
        ledger.refuse(job.token, "429 the queue is full")
    found = ledger.violations()
    assert {t for t, _ in found} == {job.token}, found
    assert any(expected in what for _, what in found), found


def test_streamed_chunks_may_lack_only_chunks_let_go_in_order():
    """On RunPod a chunk whose posts all failed is let go (the final output holds it):
    what arrived must still be the job's chunks, in order, none foreign."""
    from soak.runpod_mode import _in_order
    a, b, c = ({"token": "t", "i": i} for i in range(3))
    assert _in_order([a, c], [a, b, c]) and _in_order([], [a, b, c])
    assert not _in_order([c, a], [a, b, c])
    assert not _in_order([{"token": "u", "i": 0}], [a, b, c])
