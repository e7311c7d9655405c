"""Every route has a body limit, derived from the router (front_door.route_limits): the
job routes their settings' (realtime as runsync), every other route 64 KiB, a path no
route knows too. Each route of the app, in every mode (local API, realtime, load
balancing), is sent a body over its limit and answers 413 before a byte of it is read.
The app is driven through its own ASGI interface (no server needed for a refusal)."""
import asyncio
import json

import pytest

from worker.config import Settings
from worker.front_door import SMALL_BODY
from worker.sources.local_api import create_app

MODES = {
    "local API": (Settings(max_run_mb=1, max_runsync_mb=2), False),
    "realtime": (Settings(max_run_mb=1, max_runsync_mb=2, endpoint_id="ep-1"), False),
    "load balancing": (Settings(max_run_mb=1, max_runsync_mb=2, api_host="0.0.0.0"), True),
}


def limit_of(path: str) -> int:
    if path.endswith("/runsync") or path.endswith("/realtime"):
        return 2 * 2**20
    if path.endswith("/run"):
        return 1 * 2**20
    return SMALL_BODY


def send_oversized(app, method: str, path: str, declared: int | None, chunk: bytes = b""):
    """(status, whether the app asked for the body) for a request whose Content-Length
    says `declared` (None: chunked, one chunk of `chunk` then more)."""
    read, answer = [], {}
    headers = [(b"content-type", b"application/json")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer.get("status"), bool(read), answer.get("body", b"")


@pytest.mark.parametrize("mode", MODES)
def test_every_route_answers_413_over_its_limit_before_reading_the_body(mode):
    settings, balanced = MODES[mode]
    app = create_app(settings, balanced=balanced)
    paths = app.openapi()["paths"]
    assert any(p.endswith("/realtime") for p in paths) == (mode == "realtime")
    walked = 0
    for template, methods in paths.items():
        path = template.replace("{endpoint_id}", "ep-1").replace("{job_id}", "j-1")
        for method in methods:
            status, read, body = send_oversized(app, method.upper(), path,
                                                limit_of(path) + 1)
            assert (status, read) == (413, False), (mode, method, path, status, read)
            assert "limit" in json.loads(body)["error"]
            walked += 1
    assert walked >= 18
    # A path no route knows, and a chunked body that grows past the limit as it comes.
    assert send_oversized(app, "POST", "/nowhere", SMALL_BODY + 1)[:2] == (413, False)
    status, read, _ = send_oversized(app, "POST", "/run", None, b"x" * 300_000)
    assert status == 413 and read
