"""Every final record carries its time breakdown; a W3C traceparent travels with its job
(into the handler, its log lines and its webhook); progress bars drawn with carriage
returns are logged as states, not raw redraws."""
import json
import os
import threading
import time

from hypothesis import given, strategies as st

from tests.fake_runpod import FakeRunPod
from tests.support import Hook, Worker
from worker import tracing
from worker.parent.output import OutputPump
from worker.redraws import Redraws, last_drawn

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_trace_reaches_the_handler_its_log_lines_and_its_webhook(server):
    s = server()
    hook = Hook()
    try:
        r = s.post("/run", {"input": {"do": "trace"}, "webhook": hook.url},
                   headers={"traceparent": TRACE})
        job_id = r.json()["id"]
        (headers, body), = hook.wait(1)
        assert headers["traceparent"] == TRACE
        assert body["output"] == {"traceparent": TRACE}
        assert {"delayTime", "executionTime", "setupWaitTime"} <= set(body)
        status = s.until(job_id, lambda st: "deliveryTime" in st)    # once it was delivered
        assert status["deliveryTime"] >= 0 and status["executionTime"] >= 0
    finally:
        hook.server.shutdown()
    # the body's own traceparent wins over the header; an invalid one is ignored
    own = s.post("/runsync", {"input": {"do": "trace"}, "traceparent": OTHER},
                 headers={"traceparent": TRACE}).json()
    assert own["output"] == {"traceparent": OTHER}
    bad = s.post("/runsync", {"input": {"do": "trace"}, "traceparent": "00-zz"},
                 headers={"traceparent": TRACE}).json()
    assert bad["output"] == {"traceparent": TRACE}
    none = s.post("/runsync", {"input": {"do": "trace"}},
                  headers={"traceparent": "ff-" + TRACE[3:]}).json()
    assert none["output"] == {"traceparent": None}
    s.close()
    log = s.log.read_text()
    lines = [line for line in log.splitlines() if job_id in line]
    trace_id = TRACE[3:35]
    assert any("traced line" in line for line in lines)
    assert all(f"trace={trace_id}" in line for line in lines), lines


def test_a_queue_job_keeps_its_traceparent_and_json_logs_name_the_trace(tmp_path):
    with FakeRunPod() as q:
        q.add_jobs([{"id": "t1", "input": {"do": "trace"}, "traceparent": TRACE},
                    {"id": "t2", "input": {"do": "trace"}, "traceparent": "not one"}])
        w = Worker(q, "misbehave.py", tmp_path, RUNPOD_ENDPOINT_ID="ep")
        try:
            finals = q.wait_final(["t1", "t2"])
        finally:
            assert w.stop() == 0
    assert finals["t1"]["output"] == {"traceparent": TRACE}
    assert finals["t2"]["output"] == {"traceparent": None}
    records = [json.loads(line) for line in w.text().splitlines() if line.startswith("{")]
    t1 = [r for r in records if r["requestId"] == "t1"]
    assert t1 and all(r.get("traceId") == TRACE[3:35] for r in t1)
    assert any("traced line" in r["message"] for r in t1)
    assert any(r["message"].startswith("result delivered in ") for r in t1)
    assert not any("traceId" in r for r in records if r["requestId"] == "t2")


def test_setup_wait_is_the_part_of_the_delay_spent_waiting_for_a_child(server, tmp_path):
    gate = tmp_path / "gate"
    s = server("gated_setup.py", GATE_FILE=str(gate))
    queued_at = time.monotonic()
    job_id = s.post("/run", {"input": {}}).json()["id"]
    while time.monotonic() - queued_at < 0.3:      # the duration under test: 300 ms queued
        time.sleep(0.01)
    gate.touch()
    done = s.until(job_id, lambda st: st["status"] == "COMPLETED")
    assert done["setupWaitTime"] >= 250 and done["delayTime"] >= done["setupWaitTime"]
    again = s.post("/runsync", {"input": {}}).json()
    assert again["setupWaitTime"] == 0
    s.close()
    log = s.log.read_text()
    assert "loading weights 100%" in log and "loading weights 50%" not in log
    assert "\r" not in log
    assert "waiting for a child's setup" in log


def test_a_jobs_progress_bar_is_logged_as_its_final_state(server):
    s = server()
    job = s.post("/runsync", {"input": {"do": "bar"}}).json()
    assert job["output"] == "drawn"
    s.close()
    log = s.log.read_text()
    lines = [line for line in log.splitlines() if "job bar" in line]
    assert len(lines) == 1 and lines[0].endswith("job bar 100%") and job["id"] in lines[0]


class Pumped:
    """A real pipe read by an OutputPump; the lines it logs, with a condition to wait on."""

    def __init__(self, progress_every: float):
        r, self.w = os.pipe()
        self.seen, self.cond = [], threading.Condition()
        self.pump = OutputPump({r: "stderr"}, lambda: (), self._sink,
                               progress_every=progress_every)
        self.pump.start()

    def _sink(self, stream, line, ids):
        with self.cond:
            self.seen.append(line)
            self.cond.notify_all()

    def until(self, predicate):
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.seen), 10), self.seen

    def close(self):
        os.close(self.w)
        self.pump.finish()


def test_the_pump_shows_a_bars_state_now_and_then_and_its_last_state_at_the_end():
    p = Pumped(progress_every=0.0)
    w, seen = p.w, p.seen
    os.write(w, b"\rstep 1\rstep 2")           # step 1 is drawn; step 2 is being drawn
    p.until(lambda seen: seen == ["step 1"])
    os.write(w, b"\rstep 3\r\n")              # ends: its last state, never the raw line
    p.close()
    assert seen == ["step 1", "step 3"]


def test_redraws_throttle_on_their_own_clock():
    now = [0.0]
    r = Redraws(every=5.0, clock=lambda: now[0])
    assert r.drawn("fd", "\r1%") == ("1%", None)       # the clock starts with the line
    now[0] = 4.9
    assert r.drawn("fd", "\r1%\r2%") == ("2%", None)
    now[0] = 5.0
    assert r.drawn("fd", "\r3%") == ("3%", "3%")
    now[0] = 9.0
    assert r.drawn("fd", "\r4%")[1] is None
    r.ended("fd")
    assert r.drawn("fd", "\r5%")[1] is None            # a new line: a new clock
    assert last_drawn("a\rb\r   \r") == "b" and last_drawn("plain") == "plain"


@given(st.text(max_size=80))
def test_a_traceparent_is_kept_only_when_it_is_one(value):
    got = tracing.valid(value)
    assert got is None or (got == value and tracing.trace_id(got) != "0" * 32)
    assert tracing.valid(TRACE) == TRACE
    assert tracing.valid(TRACE.upper()) is None and tracing.valid(TRACE + "-x") is None
    assert tracing.valid("01" + TRACE[2:] + "-future") is not None


@given(st.lists(st.sampled_from(["a", "\r", "\n", "é", " "]), max_size=40))
def test_the_pump_never_logs_a_carriage_return(parts):
    r, w = os.pipe()
    seen = []
    pump = OutputPump({r: "stdout"}, lambda: (), lambda n, line, ids: seen.append(line),
                      progress_every=0.0)
    pump.start()
    os.write(w, "".join(parts).encode())
    os.close(w)
    pump.finish()
    assert not any("\r" in line for line in seen)


@given(st.from_regex(r"0[0-9a-e]-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[!-~]{0,20})?",
                     fullmatch=True),
       st.dictionaries(st.sampled_from(["input", "webhook", "policy"]),
                       st.recursive(st.none() | st.integers() | st.text(),
                                    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                                    max_leaves=8), min_size=1))
def test_a_header_trace_spliced_into_the_forwarded_body_keeps_it_json(trace, body):
    """The local API forwards the body's bytes with our id and the header's traceparent
    put in front: whatever characters a valid traceparent holds, the child reads JSON."""
    from worker.sources.job_store import spliced
    trace = tracing.valid(trace)
    raw = json.dumps(body).encode()
    front, rest = spliced(raw, "job-1", trace)
    job = json.loads(front + bytes(rest))
    assert job == {**body, "id": "job-1", **({"traceparent": trace} if trace else {})}


def test_a_bar_line_that_never_ends_is_passed_on_in_pieces():
    """A redraw followed by more than MAX_LINE bytes with no end: passed on while the
    stream is still open, never held without bound."""
    p = Pumped(progress_every=3600.0)
    os.write(p.w, b"\rbar" + b"x" * 40000)    # one redraw, then no end and no other \r
    p.until(lambda seen: len("".join(seen)) >= 40003)
    p.close()
    seen = p.seen
    assert "".join(seen) == "bar" + "x" * 40000
