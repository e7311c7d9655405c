"""The worker itself stopped (SIGSTOP of the parent, a paused machine) for longer than
its children's heartbeat timeout and a job's execution timeout, while the child went on
and finished the job: on SIGCONT the children are not declared hung, the job that ended
in time is not timed out, and nothing restarts."""
import signal
import time

from tests.support import Server


def test_a_stopped_worker_judges_its_children_by_what_they_sent_meanwhile(tmp_path):
    s = Server("misbehave.py", tmp_path, WORKER_HEARTBEAT_TIMEOUT="2")
    try:
        before = s.get("/health").json()["worker"]["child"]["pid"]
        job = s.post("/run", {"input": {"do": "sleep", "seconds": 1},
                              "policy": {"executionTimeout": 2000}}).json()["id"]
        s.until(job, lambda st: st["status"] == "IN_PROGRESS")
        s.proc.send_signal(signal.SIGSTOP)
        time.sleep(4)          # the stop itself is the event under test
        s.proc.send_signal(signal.SIGCONT)
        done = s.until(job, lambda st: st["status"] not in ("IN_QUEUE", "IN_PROGRESS"))
        after = s.get("/health").json()["worker"]
    finally:
        s.proc.send_signal(signal.SIGCONT)
        s.close()
    assert done["status"] == "COMPLETED", done
    assert after["child"]["pid"] == before and after["restarts"] == 0, after
    assert "stopped for" in s.log.read_text()
