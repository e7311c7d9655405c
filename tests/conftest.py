import pytest

# Nothing a test runs leaves loopback: see tests/loopback_pytest.py (first: every process
# started from here on is guarded).
from tests.loopback_pytest import (loopback_only, pytest_sessionfinish,  # noqa: F401
                                   pytest_terminal_summary, pytest_unconfigure)
from tests.fake_runpod import FakeRunPod

from tests.support import harness_fixture

harness = pytest.fixture(harness_fixture, name="harness")


@pytest.fixture
def server(tmp_path):
    """Local API servers (real processes) on free loopback ports."""
    from tests.support import Server
    made = []

    def make(handler="misbehave.py", **env):
        s = Server(handler, tmp_path, **env)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def fake():
    with FakeRunPod(long_poll=0.3) as q:
        yield q


@pytest.fixture
def start(fake, tmp_path):
    started = []

    def make(handler="misbehave.py", **env):
        from tests.support import Worker
        w = Worker(fake, handler, tmp_path, **env)
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
