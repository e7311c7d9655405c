"""JSON that every part of the worker can carry: one reader for bytes from the outside, and
the nesting limit that keeps every encoder and decoder on both sides of the child within
Python's recursion limit.

Shared by the parent (edges: HTTP bodies, the queue's jobs) and the child (outputs, and
the jobs it is sent).

Bytes are parsed with msgspec: faster than the standard library on large bodies
(docs/benchmarks.md) and it already refuses what we refuse (invalid UTF-8, NaN/Infinity, numbers a float
cannot hold, unpaired surrogate escapes) while keeping big integers exact. Encoding stays
with the standard library, whose rules for outputs are the ones runpod-python applies
(bytes refused, NaN carried); docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import json
import re
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode

# Nesting allowed in a job's body and in an output. Python's json (C) encoder and decoder
# recurse once per level and fail near the interpreter's limit (1000) minus the stack they
# run on, which differs between a thread, an event loop and a handler: 200 leaves every
# one of them far from it.
MAX_DEPTH = 200

_NOT_SHAPE = bytes(range(256)).translate(None, b'"[]{}')   # bytes that are not structure
_SQUARE = bytes.maketrans(b"{}", b"[]")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
_ID_KEY = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')
_SHAPE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


class JSONRefused(ValueError):
    """Bytes that are not JSON the worker accepts; the message says why, for a 400."""


def nesting(data: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in valid JSON `data`; any answer up to `limit` is
    exact or an upper bound, a deeper one is limit + 1.

    Only bytes-level operations (C speed): drop escapes and everything but quotes and
    brackets, drop what was inside strings, then strip the innermost pairs, one level per
    pass. A body with at most `limit` brackets (most bodies) costs two memchr scans."""
    brackets = _count_to(data, b"[", limit + 1)
    brackets += _count_to(data, b"{", limit + 1 - brackets)
    if brackets <= limit:
        return brackets
    reduced = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_SHAPE)
    shape = b"".join(reduced.split(b'"')[::2]).translate(_SQUARE)
    depth = 0
    while shape and depth <= limit:
        inner = shape.replace(b"[]", b"")
        if len(inner) == len(shape):
            break
        shape, depth = inner, depth + 1
    return depth


def _count_to(data: bytes, byte: bytes, stop: int) -> int:
    """Occurrences of `byte` in `data`, counted up to `stop`: find() is memchr (faster
    than count() on a large body), and a body rarely holds more than a few."""
    n, i = 0, data.find(byte)
    while i >= 0 and n < stop:
        n += 1
        i = data.find(byte, i + 1)
    return n


def _refusal(data: bytes, exc: Exception, what: str) -> JSONRefused:
    """The reason msgspec gave, in words a client can act on."""
    text = str(exc)
    if not isinstance(exc, UnicodeDecodeError):
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError as bad:
            exc = bad
    if isinstance(exc, UnicodeDecodeError):
        return JSONRefused(f"{what} is not UTF-8 (byte {exc.start}); send UTF-8 JSON")
    if "surrogate" in text or (_SURROGATE.search(data) and "truncated" in text):
        return JSONRefused(f"{what} has an unpaired UTF-16 surrogate escape (\\ud800-"
                           "\\udfff); such a string cannot be encoded")
    if "out of range" in text:
        return JSONRefused(f"{what} is not valid JSON here: {text} (numbers must be finite "
                           "floats or integers of at most 4,300 digits)")
    at = _AT_BYTE.search(text)
    if at:
        pos = int(at.group(1))
        for name in (b"-Infinity", b"Infinity", b"NaN"):
            if data[pos:pos + len(name)] == name or data[pos - 1:pos - 1 + len(name)] == name:
                return JSONRefused(f"{name.decode()} is not a JSON number")
    return JSONRefused(f"{what} is not valid JSON: {text}")


def loads(data: bytes, what: str = "the body") -> Any:
    """Parse bytes from outside: UTF-8 JSON only (a UTF-8 byte-order mark is allowed), no
    NaN/Infinity or numbers beyond a float's range, no unpaired surrogate escapes, nesting
    at most MAX_DEPTH. Anything else raises JSONRefused with a message a client can act
    on."""
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    if nesting(data) > MAX_DEPTH:
        raise JSONRefused(f"{what} nests arrays/objects more than {MAX_DEPTH} levels deep")
    try:
        return _decode(data)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise _refusal(data, exc, what) from None


def parse(data: bytes) -> Any:
    """Parse JSON this package wrote itself (a frame between parent and child): msgspec's
    speed, with the standard library's leniency (NaN, an unpaired surrogate) as the
    fallback, so that what one side encoded the other can always read."""
    try:
        return _decode(data)
    except (msgspec.MsgspecError, ValueError):
        return json.loads(bytes(data))


def split_array(data: bytes) -> tuple | None:
    """(elements, closed): the elements of a top-level JSON array as byte slices, found
    without parsing them — only strings and brackets are scanned (no number is read,
    nothing recurses), so no element's content can stop the others from being read — and
    whether the array was closed. None when `data` is not array-shaped. An element that
    breaks the quotes or brackets themselves swallows what follows it: the array is then
    not closed, and its last slice holds the rest."""
    start = len(data) - len(data.lstrip(b" \t\r\n\xef\xbb\xbf"))
    if data[start:start + 1] != b"[":
        return None
    out, depth, begin = [], 0, start + 1
    for m in _SHAPE.finditer(data, start):
        tok = m.group()
        if tok in (b"[", b"{"):
            depth += 1
        elif tok in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                out.append(data[begin:m.start()])
                begin = None
                break
        elif tok == b"," and depth == 1:
            out.append(data[begin:m.start()])
            begin = m.end()
    if begin is not None:                     # never closed: the rest is one more element
        out.append(data[begin:])
    return [e for e in out if e.strip()], begin is None


_LOOSE_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')


def loose_ids(data: bytes) -> list[str]:
    """Every `"id": "..."` in bytes whose structure is broken (so job_ids cannot tell
    which object a key is in): the last resort that keeps jobs in a broken answer from
    vanishing unreported."""
    found: list[str] = []
    for m in _LOOSE_ID.finditer(data):
        try:
            value = m.group(1).decode()
        except UnicodeDecodeError:
            continue
        if value not in found:
            found.append(value)
    return found


def job_ids(data: bytes) -> list[str]:
    """The ids of the jobs in a job-take answer that cannot be parsed: the string values
    of "id" keys in the top-level object, or in the objects of a top-level array. A job
    we cannot read can still be reported FAILED under its id instead of vanishing."""
    found: list[str] = []
    depth = 0
    want = None          # the depth at which "id" names a job: 1 (object) or 2 (array)
    key: bytes | None = None
    expect_value = False
    for m in _ID_KEY.finditer(data):
        tok = m.group()
        if tok in (b"[", b"{"):
            if want is None:
                want = 1 if tok == b"{" else 2
            depth += 1
            key, expect_value = None, False
        elif tok in (b"]", b"}"):
            depth -= 1
            key, expect_value = None, False
        elif tok == b":":
            expect_value = key == b'"id"'
        elif tok == b",":
            key, expect_value = None, False
        elif depth == want:
            if expect_value:
                try:
                    value = json.loads(tok)
                except ValueError:
                    value = None
                if isinstance(value, str) and value not in found:
                    found.append(value)
                key, expect_value = None, False
            else:
                key = tok
    return found
