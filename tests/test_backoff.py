"""The one backoff rule (worker/backoff.py) that every retry uses."""
from hypothesis import given, strategies as st

from worker.backoff import Backoff, delay


def test_waits_double_from_the_first_up_to_the_cap():
    assert [delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [delay(n, 1.0, 30.0) for n in (1, 5, 6, 7)] == [1.0, 16.0, 30.0, 30.0]
    assert delay(0, 0.5) == 0.5 and delay(-3, 0.5) == 0.5      # before the first: the first


@given(st.integers(-5, 10**6), st.floats(0.001, 100), st.floats(0.001, 1000),
       st.floats(0, 0.9))
def test_a_wait_is_finite_capped_and_within_its_jitter(step, first, cap, jitter):
    wait = delay(step, first, cap, jitter)
    plain = min(cap, first * 2.0 ** (min(max(step, 1) - 1, 64)))
    assert plain * (1 - jitter) - 1e-9 <= wait <= plain * (1 + jitter) + 1e-9


def test_a_retry_loop_starts_over_after_a_success():
    b = Backoff(0.25, 4.0)
    waits = [b.next() for _ in range(7)]
    assert all(0.8 * w0 <= w <= 1.2 * w0 for w, w0 in zip(waits, (0.25, 0.5, 1, 2, 4, 4, 4)))
    b.reset()
    assert 0.2 <= b.next() <= 0.3
