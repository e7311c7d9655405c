"""No secret is printed: one rule for every URL and every line the worker or the gateway
writes.

- A URL keeps its scheme, host, port and path; its user info becomes `***@`, and every
  query parameter or fragment whose name says it carries a credential (password, token,
  key, secret, auth, signature...) keeps its name and loses its value (`url`). A URL whose
  password holds an unencoded '/', '?' or '#' (its user info cannot be told from its
  host) shows its scheme alone.
- The worker's own secrets — WORKER_API_TOKEN, RUNPOD_AI_API_KEY, the queue's URL and
  password — are known values: `remember` them once, and `scrub` replaces each wherever it
  appears in a line (every log line: logs.py's formatters; a banner; an error body),
  however it got there.
"""
from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
CREDENTIAL = re.compile(r"pass|pwd|token|key|secret|auth|cred|sig|session|cookie", re.I)
_SECRETS: set = set()
_ORDER: tuple = ()     # the secrets, longest first (one inside another is masked whole)
_lock = threading.Lock()
SHORTEST = 4          # shorter values would mask ordinary words


def _unclear_userinfo(text: str) -> str | None:
    """What may be the user info of a URL whose password holds an unencoded '/', '?' or
    '#' (a parser ends the host there): from '://' to the last '@', when an '@' comes
    after the host it sees and that host holds a ':' or an '@'. None for any other URL."""
    head, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return None
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    after = rest[len(netloc):]
    if ":" not in netloc and "@" not in netloc:
        return None                 # no password before the host: an '@' later is data
    if "@" in netloc and "@" not in after:
        return None                 # a plain user:password@host
    return rest.rpartition("@")[0]


def url(text: str) -> str:
    """`text` (a URL) without its credentials. One whose credentials cannot be told from
    its host is shown as its scheme alone: no part of it is sure to be safe."""
    if _unclear_userinfo(text) is not None:
        return f"{text.partition('://')[0]}://{MASK}"
    if "://" not in text and "@" in text:     # no scheme: what is before the host is unclear
        return f"{MASK}@{text.rpartition('@')[2]}"
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{MASK}@" + netloc.rpartition("@")[2]
        query = parts.query
        if query:
            query = "&".join(
                f"{quote(k, safe='')}={MASK if CREDENTIAL.search(k) else quote(v, safe='')}"
                for k, v in parse_qsl(query, keep_blank_values=True))
        fragment = MASK if parts.fragment and CREDENTIAL.search(parts.fragment) \
            else parts.fragment
        return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    except ValueError:
        return "(a URL that cannot be read)"


def remember(*values) -> None:
    """Values that must never be printed (empty and very short ones are ignored)."""
    global _ORDER
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value) >= SHORTEST:
                _SECRETS.add(value)
                if "://" in value:           # a URL's password and its parameters too
                    _remember_url_parts(value)
        _ORDER = tuple(sorted(_SECRETS, key=len, reverse=True))


def _remember_url_parts(value: str) -> None:
    unclear = _unclear_userinfo(value)
    if unclear is not None:
        for part in (unclear, unclear.partition(":")[2]):
            if len(part) >= SHORTEST:
                _SECRETS.add(part)
    try:
        parts = urlsplit(value)
        for part in (parts.password, parts.username if parts.password is None else None):
            if part and len(part) >= SHORTEST:
                _SECRETS.add(part)
        for key, val in parse_qsl(parts.query):
            if CREDENTIAL.search(key) and len(val) >= SHORTEST:
                _SECRETS.add(val)
    except ValueError:
        pass


def scrub(text: str) -> str:
    """`text` with every remembered secret replaced."""
    for secret in _ORDER:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
