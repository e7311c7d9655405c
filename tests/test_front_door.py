"""The front door's lane (worker/front_door.py, Lane) answers the job routes without
FastAPI's per-request machinery: every answer must be the one FastAPI gives. Each request
here goes to the same app built twice, with and without the lane, and the two ASGI
answers are compared whole (status, headers, body)."""
from __future__ import annotations

import asyncio

import datetime
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from hypothesis import given, settings as hsettings, strategies as st

from worker.config import Settings
from worker.front_door import RUNSYNC_WAIT_MS, SMALL_BODY, lane_routes, new_app, open_door, \
    routers


class QueueDown(Exception):
    pass


def build(lane: bool, token: str = "") -> FastAPI:
    settings = Settings(api_token=token)
    app = new_app("t", "t", None, settings)
    router, public = routers(settings, (404,), (404,))

    @router.post("/runsync")
    async def runsync(request: Request, wait: int = RUNSYNC_WAIT_MS):
        body = await request.body()
        if body == b"raise":
            raise HTTPException(429, "full", headers={"Retry-After": "1"})
        if body == b"down":
            raise QueueDown("the queue is away")
        return {"wait": wait, "body": body.decode("utf-8", "replace"),
                "endpoint": request.path_params.get("endpoint_id"),
                "route": request.scope["route"].name}

    @router.api_route("/status/{job_id}", methods=["GET", "POST"])
    async def status(job_id: str):
        if job_id == "gone":
            raise HTTPException(404, f"no job with id {job_id!r}")
        return Response(b'{"id":"%s"}' % job_id.encode(), media_type="application/json")

    @public.get("/ping")
    async def ping():
        return {"status": "healthy", "text": "é"}

    @router.post("/which")
    async def which(request: Request):
        return {"by_lane": "router" not in request.scope}   # FastAPI's router sets it

    # Routes the lane must leave to FastAPI, and answers it must give as FastAPI does.
    @router.post("/bounded")
    async def bounded(wait: int = Query(5, ge=1)):
        return {"wait": wait}

    @router.post("/aliased")
    async def aliased(w: Annotated[int, Query(alias="ww")] = 5):
        return {"w": w}

    @router.get("/html", response_class=HTMLResponse)
    async def html():
        return "<p>hi</p>"

    @router.post("/nothing", status_code=204)
    async def nothing():
        return {"dropped": True}

    @router.get("/when")
    async def when():
        return {"at": datetime.datetime(2026, 12, 7, 11, 0), "tags": {"a"}}

    @router.get("/teapot")
    async def teapot():
        raise HTTPException(418, "short and stout")

    @router.get("/sync-handled")
    async def sync_handled():
        raise LookupError("found nothing")

    @router.get("/broken")
    async def broken():
        raise RuntimeError("a bug")

    @router.post("/read")
    async def read(request: Request):
        return {"n": len(await request.body())}

    @app.exception_handler(QueueDown)
    async def queue_down(request: Request, exc: Exception):
        return JSONResponse({"error": str(exc)}, status_code=503,
                            headers={"Retry-After": "2"})

    @app.exception_handler(418)
    async def by_code(request: Request, exc: Exception):
        return JSONResponse({"teapot": exc.detail}, status_code=418)

    @app.exception_handler(LookupError)
    def sync_handler(request: Request, exc: Exception):
        return JSONResponse({"lookup": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def anything(request: Request, exc: Exception):
        return JSONResponse({"error": "internal"}, status_code=500)

    open_door(app, router, public, settings, lane=lane)
    return app


async def _ask(app, method: str, path: str, query: bytes = b"", body: bytes = b"",
               headers: tuple = (), chunked: bool = False) -> list:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2),
             "headers": [] if chunked else [(b"content-length", str(len(body)).encode())]}
    scope["headers"] += list(headers)
    sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]
    if chunked:     # no Content-Length: the body limit counts it as it comes
        messages = [{"type": "http.request", "body": body[i:i + 4096], "more_body": True}
                    for i in range(0, len(body), 4096)] + [{"type": "http.request",
                                                             "body": b"", "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    return sent


def ask_both(token: str = "", **request) -> list:
    async def both():
        return [await _ask(build(lane, token), **request) for lane in (True, False)]
    with_lane, without = asyncio.run(both())
    assert with_lane == without, (request, with_lane, without)
    return with_lane


def test_the_lane_answers_what_it_can_and_only_that():
    async def which(lane):
        sent = await _ask(build(lane), "POST", "/v2/e/which")
        return sent[-1]["body"]
    assert asyncio.run(which(True)) == b'{"by_lane":true}'
    assert asyncio.run(which(False)) == b'{"by_lane":false}'
    settings = Settings()
    router, public = routers(settings)

    @router.post("/typed")
    async def typed(n: float = 1.0):     # a parameter the lane does not read: FastAPI's
        return {}

    @router.post("/bounded")
    async def bounded(wait: int = Query(5, ge=1)):
        return {}

    @router.post("/aliased")
    async def aliased(w: Annotated[int, Query(alias="ww")] = 5):
        return {}

    @router.get("/html", response_class=HTMLResponse)
    async def html():
        return ""

    @router.post("/nothing", status_code=204)
    async def nothing():
        return {}

    @router.post("/sync")
    def sync(request: Request):
        return {}
    assert lane_routes([(router, "")]) == []
    app_router, _ = routers(settings)

    @app_router.post("/runsync")
    async def direct(request: Request, wait: int = 1):
        return {}
    assert [d.route.name for d in lane_routes([(app_router, "")])] == ["direct"]


CASES = [
    dict(method="POST", path="/runsync", body=b'{"input": 1}'),
    dict(method="POST", path="/v2/ep1/runsync", body=b"{}"),
    dict(method="POST", path="/runsync", query=b"wait=5000", body=b"x"),
    dict(method="POST", path="/runsync", query=b"wait=abc"),          # FastAPI's 422
    dict(method="POST", path="/runsync", query=b"wait=1&wait=2"),
    dict(method="POST", path="/runsync", query=b"wait=-3&other=1"),
    dict(method="POST", path="/runsync", body=b"raise"),              # HTTPException
    dict(method="POST", path="/runsync", body=b"down"),               # the app's handler
    dict(method="GET", path="/runsync"),                              # 405
    dict(method="POST", path="/runsync/"),                            # FastAPI's redirect
    dict(method="GET", path="/status/abc"),
    dict(method="POST", path="/v2/e/status/abc"),
    dict(method="GET", path="/status/gone"),
    dict(method="GET", path="/status/"),
    dict(method="GET", path="/ping"),
    dict(method="GET", path="/v2/x/ping"),
    dict(method="GET", path="/nowhere"),
    dict(method="POST", path="/bounded", query=b"wait=-1"),           # FastAPI's 422
    dict(method="POST", path="/aliased", query=b"ww=7"),
    dict(method="GET", path="/html"),
    dict(method="POST", path="/nothing"),
    dict(method="GET", path="/when"),
    dict(method="GET", path="/teapot"),                                # by status code
    dict(method="GET", path="/sync-handled"),                          # a sync handler
    dict(method="POST", path="/read", body=b"x" * (SMALL_BODY + 1), chunked=True),  # 413
]


def test_an_error_no_handler_takes_goes_to_the_server_error_layer_either_way():
    for lane in (True, False):
        try:
            asyncio.run(_ask(build(lane), "GET", "/broken"))
        except RuntimeError as exc:
            assert str(exc) == "a bug"
        else:
            raise AssertionError("the error was swallowed")


def test_every_answer_is_fastapis():
    for case in CASES:
        ask_both(**case)


def test_with_a_token_the_lane_checks_it_as_fastapi_does():
    for headers in ((), ((b"authorization", b"Bearer nope"),),
                    ((b"authorization", b"Bearer s3cret"),)):
        for case in CASES:
            ask_both(token="s3cret", headers=headers, **case)


@hsettings(max_examples=150, deadline=None)
@given(query=st.binary(max_size=30), job=st.text(max_size=12), body=st.binary(max_size=20),
       prefix=st.sampled_from(["", "/v2/ep"]))
def test_any_query_path_or_body_gets_fastapis_answer(query, job, body, prefix):
    job = job.replace("/", "")
    ask_both(method="POST", path=f"{prefix}/runsync", query=query, body=body)
    if job:
        ask_both(method="GET", path=f"{prefix}/status/{job}")


SERVE_UNTIL_INTERRUPTED = r"""
import signal, socket, sys, threading
from fastapi import FastAPI
from worker.front_door import Server
app = FastAPI()
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen()
print(sock.getsockname()[1], flush=True)
server = Server(app, 1.0)
try:
    server.run([sock])                 # SIGINT's default handler: KeyboardInterrupt here
except KeyboardInterrupt:
    for t in threading.enumerate():    # ending, its last steps after the event
        if t.name == "gpu-worker-http":
            t.join(5)
    alive = [t.name for t in threading.enumerate() if t.name == "gpu-worker-http"]
    print("interrupted", alive, flush=True)
"""


def test_an_interrupted_main_thread_ends_the_server_with_it():
    import signal
    import subprocess
    import sys
    import requests
    proc = subprocess.Popen([sys.executable, "-c", SERVE_UNTIL_INTERRUPTED],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        deadline = __import__("time").monotonic() + 30
        while True:                    # serving: the default 404 of an empty app
            try:
                if requests.get(f"http://127.0.0.1:{port}/x", timeout=2).status_code == 404:
                    break
            except requests.ConnectionError:
                assert __import__("time").monotonic() < deadline
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "interrupted []" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
