"""The images run as a user runs them: real containers, host network, loopback only.

docker_tests/run.py (`make docker-test`) starts the engine and builds the image first;
run directly, these tests are skipped, with one line saying why, where no engine answers
or the image is not built. The containers' own processes carry no loopback guard (it
lives in this machine's Python); they are only ever given loopback addresses."""
import pytest

from docker_tests.containers import IMAGE, Container
# Nothing a test runs leaves loopback (tests/loopback_pytest.py), here as in tests/.
from tests.loopback_pytest import (loopback_only, pytest_sessionfinish,  # noqa: F401
                                   pytest_terminal_summary, pytest_unconfigure)


@pytest.fixture
def container():
    """Start containers (Container's arguments); every one is removed after the test."""
    made = []

    def start(*args, image: str = IMAGE, **kw) -> Container:
        c = Container(image, *args, **kw)
        made.append(c)
        return c
    yield start
    for c in made:
        c.remove()
