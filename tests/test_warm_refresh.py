"""WORKER_WARM_REFRESH: the forkserver imports the handler module once; each fresh child
is a fork of that import (never of a used child), and an import a fork cannot carry is
refused with the reason, children then starting cold. Real forkservers and children."""
import os

import pytest

from tests.support import FAST, HANDLERS, Collector
from worker.config import Settings
from worker.jobs import JobState
from worker.parent.status import WorkerState
from worker.parent.supervisor import Supervisor
from worker.targets import ScriptTarget, ValueTarget

WARM = dict(FAST, warm_refresh=True)


def _supervisor(handler: str, argv=(), **settings):
    sup = Supervisor(Settings(**{**WARM, **settings}),
                     ScriptTarget(str(HANDLERS / handler), list(argv)))
    return sup.start()


def _run(sup, job_id: str, inp: dict):
    got = Collector()
    sup.submit({"id": job_id, "input": inp}, got)
    return got.wait([job_id])[job_id]


def test_every_child_is_a_fork_of_one_import_in_its_pristine_state(tmp_path, monkeypatch):
    exits = tmp_path / "exits"
    monkeypatch.setenv("WARM_TEST_EXIT_FILE", str(exits))   # read at import, in the forkserver
    sup = _supervisor("warm_model.py")
    try:
        outs = [_run(sup, f"j{i}", {"refresh": True}).output for i in range(3)]
        assert sup.snapshot()["warm_refresh"] == "on"
    finally:
        sup.stop()
        sup.join(30)
    pids = {o["pid"] for o in outs}
    assert len(pids) == 3                                    # a fresh child each time
    assert {o["import_pid"] for o in outs} == {outs[0]["import_pid"]}   # imported once,
    assert outs[0]["import_pid"] not in pids                # not in a child
    assert {o["imported_at"] for o in outs} == {outs[0]["imported_at"]}
    assert all(o["jobs_in_this_child"] == 1 for o in outs)  # never a used state
    # The module's exit hook, registered at import in the forkserver, runs in each child
    # that stops (and never in the forkserver, which is still running).
    assert set(map(int, exits.read_text().split())) == pids


@pytest.mark.parametrize("how, why", [
    ("thread", "started threads (loader)"),
    ("thread-nondaemon", "started threads (loader)"),
    ("process", "started child processes"),
    ("cuda", "torch initialised CUDA"),
])
def test_an_import_a_fork_cannot_carry_is_refused_and_children_start_cold(how, why):
    sup = _supervisor("warm_model.py", [how], preload=("torch",) if how == "cuda" else ())
    try:
        first = _run(sup, "a", {"refresh": True})
        second = _run(sup, "b", {})
        status = sup.snapshot()["warm_refresh"]
    finally:
        sup.stop()
        assert sup.join(30)             # a forkserver held by a thread is ended, not waited
    assert status.startswith("refused:") and why in status, status
    for result in (first, second):      # cold: each child ran the module itself
        assert result.state is JobState.COMPLETED
        assert result.output["import_pid"] == result.output["pid"]
    assert first.output["pid"] != second.output["pid"]


def test_a_module_that_fails_at_import_fails_setup_as_without_warm_refresh():
    sup = _supervisor("warm_model.py", ["raise"])
    try:
        assert sup.wait_until(lambda s: s.state is not WorkerState.RUNNING, 60)
        assert sup.state is WorkerState.SETUP_FAILED
        assert "the weights are missing" in sup.failure_message
    finally:
        sup.stop()
        sup.join(30)


def test_a_warm_up_pass_at_import_leaves_children_a_working_thread_pool():
    """torch's OpenMP pool does not survive a fork: the import runs on one thread, and each
    child sets the count back (a child forked after a parallel op would hang in its next)."""
    import multiprocess
    threads = multiprocess.get_context("spawn").Pool(1).apply(_torch_threads)
    sup = _supervisor("warm_torch.py", preload=("torch",))
    try:
        outs = [_run(sup, f"t{i}", {}) for i in range(2)]
        sup.refresh("test")
        outs.append(_run(sup, "t2", {}))
        assert sup.snapshot()["warm_refresh"] == "on"
    finally:
        sup.stop()
        sup.join(30)
    assert all(o.state is JobState.COMPLETED for o in outs)
    assert {o.output["threads"] for o in outs} == {threads}
    assert len({o.output["sum"] for o in outs}) == 1


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def test_an_sdk_handler_is_served_warm_through_its_recorded_start():
    sup = _supervisor("runpod_style.py")
    try:
        out = _run(sup, "s", {"prompt": "hi"})
        assert out.state is JobState.COMPLETED and out.output["prompt"] == "hi"
        assert sup.snapshot()["warm_refresh"] == "on"
    finally:
        sup.stop()
        sup.join(30)


def test_a_handler_given_by_value_cannot_be_imported_by_the_forkserver():
    sup = Supervisor(Settings(**WARM), ValueTarget({"handler": _echo})).start()
    try:
        assert _run(sup, "v", {"x": 1}).output == {"x": 1}
        assert sup.snapshot()["warm_refresh"].startswith("off")
    finally:
        sup.stop()
        sup.join(30)


def _echo(job):
    return job["input"]


def test_the_worker_process_never_imports_the_handler_module():
    sup = _supervisor("warm_model.py")
    try:
        _run(sup, "p", {})
        import sys
        assert not any("warm_model" in str(getattr(m, "__file__", "")) for m in
                       list(sys.modules.values()))
        assert os.getpid() != _run(sup, "q", {}).output["import_pid"]
    finally:
        sup.stop()
        sup.join(30)
