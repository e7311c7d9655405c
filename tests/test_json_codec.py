"""The JSON reader at the edges (msgspec) against the standard library: it accepts what
strict JSON allows with the same values, refuses the rest with a reason, and reads back
every frame this package writes (NaN, huge integers and lone surrogates included)."""
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from worker.jsonlimits import JSONRefused, loads, nesting, parse, MAX_DEPTH

scalars = (st.none() | st.booleans() | st.integers(-10 ** 400, 10 ** 400)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)


def _same(a, b) -> bool:
    """Equal as JSON: NaN equals NaN, and -0.0 is not told from 0.0 by == either way."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_strict_json_reads_the_same_as_the_standard_library(value, ascii_only):
    data = json.dumps({"input": value}, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    expected = json.loads(data)
    if _lone_surrogate(expected):
        with pytest.raises(JSONRefused, match="surrogate"):
            loads(data)
        return
    assert _same(loads(data), expected)


def _lone_surrogate(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


@settings(max_examples=300, deadline=None)
@given(values | st.sampled_from([math.nan, math.inf, -math.inf, "\ud800", 10 ** 4000]))
def test_every_frame_the_package_writes_reads_back(value):
    data = json.dumps(["done", 1, value], ensure_ascii=False, separators=(",", ":")) \
        .encode("utf-8", "surrogatepass")
    assert _same(parse(data), json.loads(data))
    assert _same(parse(bytearray(data)), json.loads(data))
    assert _same(parse(memoryview(data)), json.loads(data))


@pytest.mark.parametrize("body, why", [
    (b'{"input": 1e400}', "finite floats"),
    (b'{"input": -1e400}', "finite floats"),
    (b'{"input": [1, NaN]}', "NaN is not a JSON number"),
    (b'{"input": Infinity}', "Infinity is not a JSON number"),
    (b'{"input": "\\ud800"}', "surrogate"),
    (b'{"input": "\xff"}', "not UTF-8"),
    (b'{"input": 1} trailing', "not valid JSON"),
])
def test_refusals_say_why(body, why):
    with pytest.raises(JSONRefused, match=why):
        loads(body)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2 * MAX_DEPTH), st.integers(0, 400), st.booleans())
def test_the_bracket_count_shortcut_agrees_with_the_full_count(depth, extra, objects):
    """nesting() stops counting brackets at the limit (memchr); the answer must still be
    exact up to the limit, or over it when deeper."""
    inner = b'{"a":' * depth + b"1" + b"}" * depth if objects else b"[" * depth + b"1" + b"]" * depth
    body = b'{"input": [' + inner + b"," + b"[]," * extra + b'"[{"]}'
    got = nesting(body)
    true_depth = depth + 2
    if true_depth <= MAX_DEPTH:          # exact, or an upper bound within the limit
        assert true_depth <= got <= MAX_DEPTH
    else:
        assert got > MAX_DEPTH
