import pytest

from tests.support import harness_fixture

harness = pytest.fixture(harness_fixture, name="harness")
