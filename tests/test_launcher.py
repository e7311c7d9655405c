"""The launcher seam (parent/launcher.py) and its multiprocess implementation
(parent/mp_launcher.py): the internals it relies on are checked, a missing one costs one
log line and a fallback instead of a broken worker, and a start that fails leaves nothing
open. Real children."""
import logging
import os
import types

import pytest
from multiprocess import forkserver, spawn as mp_spawn

from tests.support import FAST, HANDLERS, Collector, gone
from worker.config import Settings
from worker.jobs import JobState
from worker.parent import mp_launcher
from worker.parent.launcher import Launcher
from worker.parent.supervisor import Supervisor
from worker.targets import ScriptTarget


@pytest.fixture
def recheck(monkeypatch):
    """Feature detection runs again (it is done once per process), and is restored."""
    monkeypatch.setattr(mp_launcher, "_missing", None)
    yield
    monkeypatch.undo()
    mp_launcher._missing = None
    mp_launcher.missing_features()


def test_the_pinned_multiprocess_has_every_internal_the_launcher_uses(recheck, caplog):
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert mp_launcher.missing_features() == set()
    assert not caplog.records
    assert isinstance(mp_launcher.MpLauncher("forkserver"), Launcher)


def test_a_forkserver_without_its_controls_falls_back_to_spawn_in_one_line(recheck, caplog,
                                                                          monkeypatch):
    stripped = types.SimpleNamespace(_forkserver_pid=None, _preload_modules=[])   # no _stop
    monkeypatch.setattr(forkserver, "_forkserver", stripped)
    with caplog.at_level(logging.WARNING, logger="worker"):
        launcher = mp_launcher.MpLauncher("forkserver", ("json",))
    assert launcher.method == "spawn"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "forkserver control" in lines[0] and "spawn" in lines[0]
    assert launcher.health()["template"].startswith("none")
    monkeypatch.undo()                       # the real forkserver for the rest of the run
    sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "edges.py"), []),
                     launcher=launcher).start()
    try:
        listener = Collector()
        sup.submit({"id": "a", "input": {"do": "echo", "echo": 1}}, listener)
        assert listener.wait(["a"])["a"].state is JobState.COMPLETED   # a spawned child
    finally:
        sup.stop()
        assert sup.join(30)


def test_preparation_data_that_does_not_behave_is_reported(recheck, caplog, monkeypatch):
    def broken(name):
        raise AttributeError("changed")
    monkeypatch.setattr(mp_spawn, "get_preparation_data", broken)
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert mp_launcher.missing_features() == {"preparation data"}
    assert "__main__ script again" in caplog.records[0].getMessage()


def test_health_reports_the_template_and_stop_template_ends_it():
    assert not mp_launcher.live_children()
    mp_launcher.stop_template()
    launcher = mp_launcher.MpLauncher("forkserver", ())
    assert launcher.health() == {"method": "forkserver", "template": "not started",
                                 "template_pid": None, "warm_refresh": "off",
                                 "losses": 0, "last_loss": None}
    sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "edges.py"), []),
                     launcher=launcher).start()
    try:
        assert sup.wait_ready(60)
        health = sup.snapshot()["launcher"]
        assert health["template"] == "running" and health["template_pid"] > 0
    finally:
        sup.stop()
        assert sup.join(30)
    pid = mp_launcher.template_pid()
    mp_launcher.stop_template()
    assert gone(pid) and launcher.health()["template"] == "not started"


def test_a_start_that_fails_leaves_no_descriptor_open(monkeypatch):
    launcher = mp_launcher.MpLauncher("spawn", ())

    class Refused:
        def __init__(self, *args, **kwargs):
            pass

        def start(self):
            raise OSError(24, "Too many open files")
    monkeypatch.setattr(launcher.ctx, "Process", Refused)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        launcher.start(ScriptTarget(str(HANDLERS / "edges.py"), []), Settings(**FAST))
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_start_that_runs_out_of_descriptors_at_any_point_leaves_none_open():
    """RLIMIT_NOFILE set so that exactly k more descriptors can be opened, for every k
    until a start succeeds: each failure closes all it opened (multiprocess's leak of a
    pipe, and its forkserver's death on a request cut short, are kept out by the
    headroom check)."""
    import resource
    launcher = mp_launcher.MpLauncher("forkserver", ())
    target = ScriptTarget(str(HANDLERS / "edges.py"), [])
    launcher.start(target, Settings(**FAST)).close()        # the template runs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    failures = []
    for k in range(64):
        before = set(os.listdir("/proc/self/fd"))
        used = {int(fd) for fd in before}
        limit, free = 0, 0
        while free < k or limit in used:
            free += limit not in used
            limit += 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(limit, 1), hard))
        try:
            proc = launcher.start(target, Settings(**FAST))
        except Exception as exc:          # noqa: BLE001 - recorded and checked
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            failures.append(type(exc).__name__)
            assert set(os.listdir("/proc/self/fd")) == before, (k, exc)
            continue
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        proc.close()
        break
    else:
        raise AssertionError("no start succeeded")
    assert failures and "OSError" in failures


def test_a_child_the_loop_cannot_watch_is_released_not_left_running(monkeypatch):
    """The launcher started the process but its host could not be made (its output thread
    would not start): the process is killed and released, and the start is a failure
    with the reason, not a child nobody can stop."""
    from worker.parent import child_host
    launcher = mp_launcher.MpLauncher("forkserver", ())
    started = []
    real_start = launcher.start

    def start(*args, **kwargs):
        proc = real_start(*args, **kwargs)
        started.append(proc.pid)
        return proc
    monkeypatch.setattr(launcher, "start", start)

    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(child_host.OutputPump, "start", refuse)
    sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "edges.py"), []),
                     launcher=launcher).start()
    try:
        assert sup.wait_until(lambda s: s.state.value != "running", 60)
        assert "can't start new thread" in sup.failure_message
        assert started and gone(started[0])
    finally:
        sup.stop()
        assert sup.join(30)
