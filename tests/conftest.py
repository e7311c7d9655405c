import pytest

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
