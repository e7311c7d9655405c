"""Handlers that misbehave, on real child processes. After each, the next job succeeds."""
import json
import os
import time

import pytest

from tests.support import gone
from worker.jobs import JobState, Reason
from worker.parent.supervisor import WorkerState


def _ok_after(h, old_pid=None, same_child=None):
    result = h.run({"do": "ok"})
    assert result.state is JobState.COMPLETED, result.body
    pid = result.output["pid"]
    if same_child is True:
        assert pid == old_pid
    elif same_child is False:
        assert pid != old_pid
    return pid


def _record(result):
    info = json.loads(result.error)
    assert set(info) >= {"error_type", "error_message", "error_traceback", "hostname",
                         "worker_id", "runpod_version", "worker_version"}
    assert info["runpod_version"] == "1.12.0"
    return info


def test_raise_in_job_fails_that_job_only(harness):
    h = harness("misbehave.py")
    pid = _ok_after(h)
    result = h.run({"do": "raise"})
    assert result.state is JobState.FAILED and result.reason is Reason.HANDLER_ERROR
    info = _record(result)
    assert info["error_type"] == "<class 'ValueError'>"
    assert info["error_message"] == "bad things happened"
    assert 'raise ValueError("bad things happened")' in info["error_traceback"]
    _ok_after(h, pid, same_child=True)


@pytest.mark.parametrize("action, expect", [
    ("os_exit", "exited with code 7"),
    ("sigkill", "killed by SIGKILL (out of memory?)"),
    ("segfault", "killed by SIGSEGV"),
])
def test_child_death_fails_the_job_and_a_new_child_takes_over(harness, action, expect):
    h = harness("misbehave.py")
    pid = _ok_after(h)
    result = h.run({"do": action})
    assert result.state is JobState.FAILED and result.reason is Reason.WORKER_LOST
    assert expect in _record(result)["error_message"]
    assert gone(pid)
    _ok_after(h, pid, same_child=False)
    assert h.sup.state is WorkerState.RUNNING


def test_sys_exit_in_job_fails_the_job_and_replaces_the_child(harness):
    h = harness("misbehave.py")
    pid = _ok_after(h)
    result = h.run({"do": "sys_exit"})
    assert result.state is JobState.FAILED and result.reason is Reason.HANDLER_ERROR
    info = _record(result)
    assert info["error_type"] == "<class 'SystemExit'>" and info["error_message"] == "3"
    _ok_after(h, pid, same_child=False)


def test_not_json_output_fails_clearly(harness):
    h = harness("misbehave.py")
    pid = _ok_after(h)
    result = h.run({"do": "not_json"})
    assert result.state is JobState.FAILED
    assert "not JSON-serialisable" in _record(result)["error_message"]
    assert "set" in _record(result)["error_message"]
    _ok_after(h, pid, same_child=True)


def test_jobs_queued_behind_a_crash_are_not_lost(harness):
    h = harness("misbehave.py")
    ids = [h.submit({"do": "sigkill"}), h.submit({"do": "ok", "echo": 1}),
           h.submit({"do": "ok", "echo": 2})]
    results = h.listener.wait(ids)
    assert results[ids[0]].reason is Reason.WORKER_LOST
    assert [results[i].output["echo"] for i in ids[1:]] == [1, 2]
    assert all(n == 1 for n in h.listener.counts.values())


def test_sleep_past_timeout_ends_timed_out_and_the_child_is_replaced(harness):
    h = harness("misbehave.py", job_timeout=0.5)
    pid = _ok_after(h)
    t0 = time.monotonic()
    result = h.run({"do": "sleep", "seconds": 60})
    assert result.state is JobState.TIMED_OUT and result.reason is Reason.TIMED_OUT
    assert "execution timeout of 0.5s" in _record(result)["error_message"]
    assert time.monotonic() - t0 < 30
    assert gone(pid)
    _ok_after(h, pid, same_child=False)


def test_policy_execution_timeout_overrides_the_default(harness):
    h = harness("misbehave.py", job_timeout=0)
    result = h.run({"do": "sleep", "seconds": 60}, policy={"executionTimeout": 300})
    assert result.state is JobState.TIMED_OUT
    assert "0.3s" in _record(result)["error_message"]
    _ok_after(h)


def test_timeout_kills_the_jobs_grandchildren(harness, tmp_path):
    h = harness("misbehave.py", job_timeout=1.0)
    pidfile = tmp_path / "grandchild.pid"
    result = h.run({"do": "sleep_with_grandchild", "pidfile": str(pidfile)})
    assert result.state is JobState.TIMED_OUT
    assert gone(int(pidfile.read_text()))
    _ok_after(h)


def test_a_handler_that_swallows_everything_is_killed(harness):
    # Ignores the cooperative stop and SIGTERM: SIGKILL after two grace periods.
    h = harness("misbehave.py", job_timeout=0.5, stop_grace=0.5)
    pid = _ok_after(h)
    result = h.run({"do": "swallow"})
    assert result.state is JobState.TIMED_OUT
    assert gone(pid, timeout=10)
    _ok_after(h, pid, same_child=False)


def test_a_child_that_stops_heartbeating_is_replaced(harness):
    h = harness("misbehave.py", heartbeat_interval=0.1, heartbeat_timeout=1.5)
    pid = _ok_after(h)
    result = h.run({"do": "hold_gil"})
    assert result.state is JobState.FAILED and result.reason is Reason.WORKER_LOST
    assert "no heartbeat" in _record(result)["error_message"]
    _ok_after(h, pid, same_child=False)


def test_a_job_that_keeps_killing_the_child_fails_for_good(harness):
    h = harness("misbehave.py", job_max_crashes=2)
    job = h.submit({"do": "os_exit"})
    after = h.submit({"do": "ok"})
    results = h.listener.wait([job, after])
    assert results[job].reason is Reason.WORKER_LOST
    assert "killed the worker process 2 times" in _record(results[job])["error_message"]
    assert results[after].state is JobState.COMPLETED
    assert h.listener.counts[job] == 1
    assert h.sup.status.spawns == 3


def test_restart_storm_breaker_stops_respawning(harness):
    h = harness("misbehave.py", restart_limit=3, restart_window=60)
    ids = [h.submit({"do": "os_exit"}) for _ in range(3)] + [h.submit({"do": "ok"})]
    results = h.listener.wait(ids)
    assert h.sup.state is WorkerState.BROKEN
    assert h.sup.status.spawns == 3
    last = _record(results[ids[-1]])
    assert last["error_type"] == "WorkerBroken"
    assert "3 worker processes in a row died before finishing a job" in last["error_message"]
    late = h.run({"do": "ok"})
    assert late.reason is Reason.REFUSED


# --- setup ---------------------------------------------------------------------------------

def test_raise_at_import_is_reported_once_with_traceback_and_no_respawn(harness, caplog):
    h = harness("raise_at_import.py")
    result = h.run({})
    assert h.sup.state is WorkerState.SETUP_FAILED
    info = _record(result)
    assert info["error_type"] == "SetupFailed"
    assert "RuntimeError: model weights missing" in info["error_message"]
    assert 'raise RuntimeError("model weights missing")' in info["error_traceback"]
    assert h.run({}).reason is Reason.REFUSED
    assert h.sup.status.spawns == 1
    assert sum("handler setup failed" in r.message for r in caplog.records) == 1


def test_exit_at_import_shows_the_exit_code_and_last_output(harness):
    h = harness("exit_at_import.py")
    info = _record(h.run({}))
    assert "exited with code 3 during setup" in info["error_message"]
    assert "loading the model..." in info["error_traceback"]
    assert h.sup.status.spawns == 1


def test_sys_exit_at_import(harness):
    info = _record(harness("sys_exit_at_import.py").run({}))
    assert "called sys.exit(4) during setup" in info["error_message"]


def test_setup_that_never_finishes_hits_the_setup_deadline(harness):
    h = harness("slow_setup.py", setup_timeout=1.0)
    info = _record(h.run({}))
    assert "setup did not finish within 1s" in info["error_message"]
    assert h.sup.status.spawns == 1


def test_module_without_start_or_handler_is_a_setup_failure(harness):
    info = _record(harness("nothing.py").run({}))
    assert "without calling start" in info["error_message"]


def test_module_with_handler_but_no_start_is_served(harness):
    result = harness("no_start.py").run({})
    assert result.output == "served without start()"


# --- cancel ----------------------------------------------------------------------------------

def test_cancel_pending_and_running_inline_jobs(harness):
    h = harness("misbehave.py")
    pid = _ok_after(h)
    running = h.submit({"do": "sleep", "seconds": 60})
    queued = h.submit({"do": "ok"})
    h.sup.wait_until(lambda s: running in s.running, 10)
    h.sup.cancel(queued)
    h.sup.cancel(running)
    results = h.listener.wait([running, queued])
    assert results[queued].state is JobState.CANCELLED
    assert results[running].state is JobState.CANCELLED
    assert gone(pid)     # a sync handler cannot be interrupted safely: its process goes
    _ok_after(h, pid, same_child=False)


def test_cancel_async_task_keeps_the_child(harness):
    h = harness("async_plain.py")
    first = h.run({"delay": 0})
    job = h.submit({"delay": 60})
    h.sup.wait_until(lambda s: job in s.running, 10)
    h.sup.cancel(job)
    assert h.listener.wait([job])[job].state is JobState.CANCELLED
    after = h.run({"delay": 0})
    assert after.output["pid"] == first.output["pid"]


def test_async_timeout_cancels_the_task_not_the_process(harness):
    h = harness("async_plain.py", job_timeout=0.5)
    first = h.run({"delay": 0})
    assert h.run({"delay": 60}).state is JobState.TIMED_OUT
    assert h.run({"delay": 0}).output["pid"] == first.output["pid"]


def test_duplicate_job_id_is_refused_while_the_first_runs(harness):
    h = harness("misbehave.py")
    h.submit({"do": "sleep", "seconds": 0.5}, job_id="same")
    h.submit({"do": "ok"}, job_id="same")
    h.listener.wait_for(lambda c: c.counts.get("same") == 2)
    states = [e[2] for e in h.listener.events if e[0] == "result"]
    assert sorted(states) == ["COMPLETED", "FAILED"]


def test_parent_death_takes_the_child_and_its_group_down(tmp_path):
    """SIGKILL the supervisor: its child (and the child's subprocess) exit on their own."""
    import signal
    import subprocess
    import sys
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "parent.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(os.path.dirname(os.path.dirname(__file__)))!r})
from tests.support import Harness
if __name__ == "__main__":   # children re-import the parent's main module, as with spawn
    h = Harness("misbehave.py")
    h.submit({{"do": "sleep_with_grandchild", "pidfile": {str(pidfile)!r}}})
    h.sup.wait_until(lambda s: s.running, 30)
    print(h.sup.child_pid, flush=True)
    time.sleep(600)
""")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert gone(child_pid, timeout=10)
    assert gone(grandchild, timeout=10)


def test_a_job_submitted_after_the_supervisor_stopped_is_refused_not_lost(harness):
    h = harness("misbehave.py")
    h.run({"do": "ok"})
    h.sup.stop()
    assert h.sup.join(30)
    late = h.run({"do": "ok"}, timeout=5)
    assert late.state is JobState.FAILED and late.reason is Reason.REFUSED
    assert "stopped" in late.error_info()["error_message"]
    assert h.listener.counts[late.job_id] == 1
