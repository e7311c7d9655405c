"""Users' text cannot pass for the worker's: an output line is logged under a job only if
that job was sent to that child (a tag naming any other id stays in the line as text), the
child escapes tag characters in what Python code prints, the log escapes every control
character but colours and indents a record's later lines, and a webhook must be a URL."""
import json
import logging
import threading

from tests.support import HANDLERS, Harness
from worker.jobs import JobState
from worker.logs import JsonFormatter, TextFormatter
from worker.protocol import LINE_END, LINE_TAG


class Lines:
    def __init__(self):
        self.seen, self.cond = [], threading.Condition()

    def __call__(self, stream, line, ids):
        with self.cond:
            self.seen.append((line, ids))
            self.cond.notify_all()

    def wait(self, n, timeout=30):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.seen) >= n, timeout), self.seen
            return list(self.seen)


def test_a_line_naming_another_job_is_not_logged_as_that_job():
    lines = Lines()
    h = Harness(str(HANDLERS / "forger.py"), sink=lines)
    try:
        forged = f"{LINE_TAG}victim-job{LINE_END}I am the victim"
        job = h.submit({"text": forged})
        assert h.listener.wait([job])[job].state is JobState.COMPLETED
        seen = lines.wait(2)
        assert all(ids != ("victim-job",) for _, ids in seen), seen
        assert all("I am the victim" in line and "victim-job" in line for line, _ in seen)
        # the job's own id in a tag is its own: written at fd level, it is accepted
        own = h.submit({"text": f"{LINE_TAG}own-1{LINE_END}mine"}, job_id="own-1")
        h.listener.wait([own])
        mine = lines.wait(4)[2:]
        assert [ids for _, ids in mine] == [("own-1",), ("own-1",)], mine
        assert sorted(line for line, _ in mine) == ["\\x1eown-1\\x1fmine", "mine"]
    finally:
        h.close()


def _record(message, job_id=None, exc=None):
    r = logging.LogRecord("worker", logging.INFO, __file__, 1, "%s", (message,), exc)
    r.job_id = job_id
    return r


def test_the_readable_log_escapes_what_could_forge_a_line_and_keeps_colours():
    text = TextFormatter().format(_record(
        "\x1b[31mred\x1b[0m\r2026-12-02 00:00:00 INFO worker | forged\x1b[2K\x1b]0;t\x07"
        "\u2028x\nsecond", job_id="a\x1b[1Ab"))
    first, second = text.split("\n")
    assert "\x1b[31mred\x1b[0m" in first                     # colours kept
    assert "\\x0d" in first and "\\x1b[2K" in first and "\\x1b]0;t\\x07" in first
    assert "\\u2028" in first and "a\\x1b[1Ab" in first
    assert second == "    second"                            # never a line of its own
    for ch in "\r\x07\u2028":
        assert ch not in text


def test_json_lines_escape_every_control_character():
    line = JsonFormatter().format(_record("\x1b[31m\x85\u2028\r\nx", job_id="j\x07"))
    assert json.loads(line)["message"] == "\x1b[31m\x85\u2028\r\nx"
    assert all(ch not in line for ch in "\x1b\x85\u2028\r\n\x07")
