"""The launcher is no single point of failure (docs/reliability.md, "The launcher"):
real workers, real forkservers, real signals.

- the forkserver killed while two children run jobs: every job completes, the children
  live on (adopted by the worker, which then learns their exit codes), and the next child
  starts from a new forkserver;
- the forkserver stopped during a refresh: the loop never waits on it, /health answers
  throughout, and the queued job runs on a child of a new forkserver;
- descriptors exhausted during a refresh: the start is retried, the worker serves again
  once they are free, and no descriptor is left open;
- a child that does not exit after SIGKILL (simulated: its launcher's handle drops the
  signal) is declared lost, and the other children serve meanwhile;
- each child's oom_score_adj is above the parent's and the forkserver's; a child killed
  with SIGKILL mid-job fails that job once;
- without pidfd_open, exits are learned by polling /proc.
"""
import os
import resource
import signal
import threading
import time

import psutil
import pytest

from tests.support import FAST, HANDLERS, Collector, Server, gone
from worker.config import Settings
from worker.jobs import JobState
from worker.parent import mp_launcher
from worker.parent.supervisor import Supervisor
from worker.targets import ScriptTarget

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
MISBEHAVE = ScriptTarget(str(HANDLERS / "misbehave.py"), [])


def _zombies(pid: int) -> list:
    return [p.pid for p in psutil.Process(pid).children()
            if p.status() == psutil.STATUS_ZOMBIE]


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("never happened")


def test_the_forkserver_killed_while_two_children_run_jobs_fails_none(tmp_path):
    server = Server("misbehave.py", tmp_path, WORKER_CHILDREN="2")
    try:
        worker = server.health_until(
            lambda w: all(c["state"] == "ready" for c in w["children"]))
        pids = sorted(c["pid"] for c in worker["children"])
        template = worker["launcher"]["template_pid"]
        assert all(psutil.Process(p).ppid() == template for p in pids)
        ids = [server.post("/run", {"input": {"do": "sleep", "seconds": 3}}).json()["id"]
               for _ in range(2)]
        server.health_until(lambda w: w["jobs"]["in_progress"] == 2)
        os.kill(template, signal.SIGKILL)
        for job_id in ids:
            status = server.until(job_id, lambda s: s["status"] in FINAL, timeout=30)
            assert status["status"] == "COMPLETED", status
        worker = server.get("/health").json()["worker"]
        assert sorted(c["pid"] for c in worker["children"]) == pids    # the same children
        assert worker["launcher"]["losses"] == 1
        assert "died while its children ran" in worker["launcher"]["last_loss"]
        # The worker adopted them (subreaper): their exit codes are the kernel's.
        assert all(psutil.Process(p).ppid() == server.proc.pid for p in pids)
        crash = server.post("/runsync", {"input": {"do": "os_exit"}}).json()
        assert crash["status"] == "FAILED" and "exited with code 7" in str(crash), crash
        # The next child comes from a new forkserver, and serves.
        worker = server.health_until(
            lambda w: all(c["state"] == "ready" for c in w["children"])
            and sorted(c["pid"] for c in w["children"]) != pids)
        new_template = worker["launcher"]["template_pid"]
        assert new_template not in (None, template)
        ok = server.post("/runsync", {"input": {"do": "ok"}}).json()
        assert ok["status"] == "COMPLETED", ok
        _until(lambda: not _zombies(server.proc.pid), 10)    # what it adopted, it reaped
    finally:
        server.close()


def test_a_stopped_forkserver_is_replaced_and_health_answers_throughout(tmp_path):
    server = Server("misbehave.py", tmp_path, WORKER_LAUNCH_TIMEOUT="5")
    template = None
    answers, stop = [], threading.Event()

    def poll_health():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code = server.get("/health", timeout=5).status_code
            except Exception as exc:        # noqa: BLE001 - recorded, asserted below
                code = repr(exc)
            answers.append((code, time.monotonic() - t0))
            stop.wait(0.1)
    poller = threading.Thread(target=poll_health, daemon=True)
    try:
        worker = server.health_until(lambda w: w["child"] and w["child"]["state"] == "ready")
        template = worker["launcher"]["template_pid"]
        poller.start()
        os.kill(template, signal.SIGSTOP)
        t0 = time.monotonic()
        first = server.post("/run", {"input": {"do": "refresh"}}).json()["id"]
        queued = server.post("/run", {"input": {"do": "ok"}}).json()["id"]
        assert server.until(first, lambda s: s["status"] in FINAL)["status"] == "COMPLETED"
        # The old child is gone; the start through the stopped forkserver hangs. The loop
        # still takes what comes: a job submitted now is counted at once.
        server.health_until(lambda w: w["child"] is None, timeout=10)
        third = server.post("/run", {"input": {"do": "ok"}}).json()["id"]
        server.health_until(lambda w: w["jobs"]["pending"] == 2 and w["child"] is None,
                            timeout=2.5)    # the start hangs 5 s: a blocked loop fails this
        for job_id in (queued, third):
            status = server.until(job_id, lambda s: s["status"] in FINAL, timeout=20)
            assert status["status"] == "COMPLETED" and time.monotonic() - t0 < 20, status
        worker = server.get("/health").json()["worker"]
        assert worker["launcher"]["losses"] == 1
        assert "did not start a child within 5s" in worker["launcher"]["last_loss"]
        assert worker["launcher"]["template_pid"] != template and gone(template)
        stop.set()
        poller.join(10)
        assert answers and all(code == 200 for code, _ in answers), answers
        assert max(seconds for _, seconds in answers) < 2.0, answers
        _until(lambda: not _zombies(server.proc.pid), 10)
    finally:
        stop.set()
        if template is not None and not gone(template, 0.1):
            os.kill(template, signal.SIGCONT)
        server.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_exhausted_during_a_refresh_are_waited_out_and_none_leak():
    """RLIMIT_NOFILE below every free descriptor number: each open fails with EMFILE,
    as when a low `ulimit -n` meets idle connections; descriptors already open work."""
    sup = Supervisor(Settings(**FAST), MISBEHAVE).start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert sup.wait_ready(60)
        listener = Collector()
        sup.submit({"id": "before", "input": {"do": "ok"}}, listener)
        assert listener.wait(["before"])["before"].state is JobState.COMPLETED
        before = _fd_count()
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
        try:
            sup.refresh("test")
            assert sup.wait_until(lambda s: s.children[0].start_error is not None, 30)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert "Too many open files" in sup.status.children[0].start_error
        assert sup.wait_until(lambda s: s.ready, 60)          # the retry, after 1 s
        assert sup.status.state.value == "running"
        assert sup.status.children[0].start_error is None
        sup.submit({"id": "after", "input": {"do": "ok"}}, listener)
        assert listener.wait(["after"])["after"].state is JobState.COMPLETED
        assert _fd_count() == before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        sup.stop()
        assert sup.join(30)


class _Unkillable(mp_launcher.MpLauncher):
    """Children whose SIGTERM and SIGKILL never arrive while their pid is in `stuck`:
    what a child stuck in the kernel (a driver, a frozen cgroup) looks like to the
    parent."""

    def __init__(self):
        super().__init__("forkserver", ())
        self.stuck: set = set()

    def start(self, *args, **kwargs):
        proc = super().start(*args, **kwargs)
        real = proc.signal_group

        def signal_group(sig):
            if not (proc.pid in self.stuck and sig in (signal.SIGTERM, signal.SIGKILL)):
                real(sig)
        proc.signal_group = signal_group
        return proc


def test_a_child_that_does_not_exit_after_sigkill_is_declared_lost_and_others_serve():
    launcher = _Unkillable()
    sup = Supervisor(Settings(**FAST, children=2), MISBEHAVE, launcher=launcher).start()
    stuck = None
    try:
        assert sup.wait_until(lambda s: all(c.ready for c in s.children), 60)
        listener = Collector()
        sup.submit({"id": "stuck", "input": {"do": "swallow"},
                    "policy": {"executionTimeout": 1000}}, listener)
        assert sup.wait_until(lambda s: s.running == ("stuck",), 30)
        stuck = next(c.pid for c in sup.status.children if c.running)
        launcher.stuck.add(stuck)
        result = listener.wait(["stuck"])["stuck"]
        assert result.state is JobState.TIMED_OUT
        sup.submit({"id": "meanwhile", "input": {"do": "ok"}}, listener)  # the other serves
        assert listener.wait(["meanwhile"])["meanwhile"].state is JobState.COMPLETED
        assert sup.wait_until(lambda s: any(c.lost for c in s.children), 30)
        health = sup.snapshot()["children"]
        assert sorted(c["lost"] for c in health) == [0, 1]
        assert b"gpu_worker_child_lost{child=" in sup.metrics.text()
        assert psutil.pid_exists(stuck)                 # still there: let go of, not killed
        assert sup.wait_until(lambda s: all(c.ready for c in s.children)
                              and stuck not in [c.pid for c in s.children], 60)
        sup.submit({"id": "after", "input": {"do": "ok"}}, listener)
        assert listener.wait(["after"])["after"].state is JobState.COMPLETED
        assert listener.counts["stuck"] == 1
    finally:
        if stuck is not None:
            launcher.stuck.discard(stuck)
            os.kill(stuck, signal.SIGKILL)
        sup.stop()
        assert sup.join(30)
    assert stuck is None or gone(stuck)


def _oom_adj(pid) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def test_children_are_the_oom_killers_pick_and_a_sigkill_fails_its_job_once():
    sup = Supervisor(Settings(**FAST), MISBEHAVE).start()
    try:
        assert sup.wait_ready(60)
        child, template = sup.status.child_pid, mp_launcher.template_pid()
        assert _oom_adj(child) > _oom_adj(os.getpid())
        assert _oom_adj(child) > _oom_adj(template)
        assert _oom_adj(child) == min(1000, _oom_adj(os.getpid()) + 500)
        listener = Collector()
        sup.submit({"id": "oom", "input": {"do": "sleep", "seconds": 30}}, listener)
        assert sup.wait_until(lambda s: s.running == ("oom",), 30)
        os.kill(child, signal.SIGKILL)                  # what the OOM killer sends
        result = listener.wait(["oom"])["oom"]
        assert result.state is JobState.FAILED and listener.counts["oom"] == 1
        assert "killed by SIGKILL (out of memory?)" in result.error_info()["error_message"]
        assert sup.wait_ready(60)
    finally:
        sup.stop()
        assert sup.join(30)


def test_without_pidfd_exits_are_learned_from_proc(monkeypatch):
    def refused(pid, flags=0):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "pidfd_open", refused)
    sup = Supervisor(Settings(**FAST), MISBEHAVE).start()
    try:
        assert sup.wait_ready(60)
        listener = Collector()
        sup.submit({"id": "r", "input": {"do": "refresh"}}, listener)
        first = sup.status.child_pid
        assert listener.wait(["r"])["r"].state is JobState.COMPLETED
        assert sup.wait_until(lambda s: s.ready and s.child_pid != first, 60)
        template = mp_launcher.template_pid()
        os.kill(template, signal.SIGKILL)       # no report will come: /proc says it
        sup.submit({"id": "k", "input": {"do": "sleep", "seconds": 30}}, listener)
        assert sup.wait_until(lambda s: s.running == ("k",), 30)
        os.kill(sup.status.child_pid, signal.SIGKILL)
        result = listener.wait(["k"])["k"]
        assert result.state is JobState.FAILED and listener.counts["k"] == 1
        assert sup.wait_ready(60)
        sup.submit({"id": "again", "input": {"do": "ok"}}, listener)
        assert listener.wait(["again"])["again"].state is JobState.COMPLETED
    finally:
        sup.stop()
        assert sup.join(30)


@pytest.mark.parametrize("code", [0, 7, -9])
def test_an_exit_code_comes_from_the_forkserver_report_while_it_lives(code):
    """The common path: the pidfd says the child is gone, the forkserver's report gives
    the code (the parent is not its parent)."""
    sup = Supervisor(Settings(**FAST, job_max_crashes=1), MISBEHAVE).start()
    try:
        assert sup.wait_ready(60)
        listener = Collector()
        do = {0: "refresh", 7: "os_exit", -9: "sigkill"}[code]
        sup.submit({"id": "x", "input": {"do": do}}, listener)
        result = listener.wait(["x"])["x"]
        if code == 0:
            assert result.state is JobState.COMPLETED
        else:
            text = result.error_info()["error_message"]
            assert ("exited with code 7" if code == 7 else "killed by SIGKILL") in text, text
    finally:
        sup.stop()
        assert sup.join(30)
