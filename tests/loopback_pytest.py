"""The test suite's side of tests/loopback_only/: on import, this process and every Python
process started from here on refuse to leave loopback and record each refusal; the
fixture and hooks below (imported by tests/conftest.py and gpu_tests/conftest.py) fail
the test during which a refusal was recorded, and the run if one came after the last
test. The record is read rather than the exception trusted: the code that dialled may
have swallowed it."""
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "loopback_only"))
import loopback_guard  # noqa: E402

# A folder of its own, readable by all, and a record writable by all: a child may run as
# another user (WORKER_CHILD_USER) or without CAP_DAC_OVERRIDE.
RECORD = os.path.join(tempfile.mkdtemp(prefix="loopback-only-"), "refused")
os.chmod(os.path.dirname(RECORD), 0o755)
loopback_guard.enforce(RECORD)
_checked = {"offset": 0, "late": []}


def _refusals() -> list:
    refused, _checked["offset"] = loopback_guard.read(RECORD, _checked["offset"])
    return refused


@pytest.fixture(autouse=True)
def loopback_only():
    """Fails the test during which (or just before which) a process was refused, naming
    the address and the process. One stat when none was."""
    yield
    refused = _refusals()
    if refused:
        pytest.fail("a process tried to leave loopback (refused; tests/loopback_only):\n"
                    + "\n".join(loopback_guard.describe(r) for r in refused), pytrace=False)


def pytest_sessionfinish(session):
    """And after the last test: a process may outlive the test that started it."""
    _checked["late"] += _refusals()
    if _checked["late"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    for refusal in _checked["late"]:
        terminalreporter.write_line("tried to leave loopback after the tests (refused): "
                                    + loopback_guard.describe(refusal), red=True)
    _checked["late"] = []


def pytest_unconfigure(config):
    shutil.rmtree(os.path.dirname(RECORD), ignore_errors=True)
