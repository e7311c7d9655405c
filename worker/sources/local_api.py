"""The local API: a RunPod endpoint on your machine (FastAPI + uvicorn).

Routes at the root and under /v2/{endpoint_id}/, so the official client works unchanged:

    runpod.endpoint_url_base = "http://127.0.0.1:8000/v2"
    runpod.Endpoint("local").run_sync({"prompt": "hi"})

Jobs really queue: /run returns at once and the job runs in the background; /runsync
waits; /cancel stops the job; /stream returns chunks as they come.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import sys

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import compile_path

from .. import stream_bound
from ..config import Settings
from ..jobs import MAX_TIMEOUT_MS, JobError, JobState, validate_job
from ..jsonlimits import JSONRefused, loads
from ..parent.metrics import CONTENT_TYPE
from ..parent.supervisor import Supervisor, WorkerState
from ..version import __version__
from .host import SourceHost
from . import listen, reloader, webhook_post
from .job_store import JobStore, QueueFull

log = logging.getLogger("worker.api")

RUNSYNC_WAIT_MS = 90_000
ANSWER_WAIT_S = 5      # after a stop: to write the answers of requests that waited on jobs


# The request body, described for /docs and for schema-driven fuzzing (the routes read
# the raw body themselves, to forward it without re-encoding).
JOB_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["input"],
    "properties": {"input": {"description": "the handler's input (any JSON)"},
                   "webhook": {"type": "string", "format": "uri"},
                   "traceparent": {"type": "string", "description":
                                   "W3C trace context for the job (else the request's "
                                   "traceparent header); ignored when invalid"},
                   "policy": {"type": "object", "properties": {
                       "executionTimeout": {"type": "number", "minimum": 0,
                                            "maximum": MAX_TIMEOUT_MS},
                       "ttl": {"type": "number", "exclusiveMinimum": 0,
                               "maximum": MAX_TIMEOUT_MS}}}}}}}}}
_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {}}}}}}
_WHY = {400: "bad request body", 401: "missing or wrong token", 404: "unknown or expired job",
        413: "request body over the limit", 429: "the queue is full (see Retry-After)",
        503: "the worker cannot run jobs"}



def parse_job_body(raw: bytes) -> tuple:
    """A /run body checked (HTTPException 400 with the reason otherwise): (body, raw as
    read, a byte-order mark dropped)."""
    try:
        body = loads(raw, "the request body")
    except JSONRefused as exc:
        raise HTTPException(400, str(exc)) from None
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]          # what is forwarded is what was read
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object with an 'input'")
    if "input" not in body:
        raise HTTPException(400, "the request body has no 'input'")
    try:
        validate_job({**body, "id": "checked"})      # policy; the id is ours to give
    except JobError as exc:
        raise HTTPException(400, str(exc)) from None
    if body.get("webhook") is not None:
        why = webhook_post.refusal(body["webhook"])
        if why:
            raise HTTPException(400, f"'webhook' must be an http(s) URL: {why}")
    return body, raw


def errors(*codes) -> dict:
    return {code: {"description": _WHY[code], **_ERROR} for code in codes}


class _TooLarge(Exception):
    pass


SMALL_BODY = 64 * 1024     # a route that takes no job: no more than this, ever


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit with 413 before buffering them
    (Content-Length checked up front; chunked bodies counted as they arrive). Every
    request has a limit: its route's (from the router: `route_limits`), or SMALL_BODY for
    routes that take no job and for paths no route matches."""

    def __init__(self, app, table: list):
        self.app = app
        self.table = table          # [(a route's path regex, bytes)], in the router's order

    def _limit(self, path: str) -> int:
        for regex, limit in self.table:
            if regex.match(path):
                return limit
        return SMALL_BODY

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self._limit(scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return await _reject(send, limit)
                except ValueError:
                    return await _json(send, 400, {"error": "bad Content-Length"})
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await _reject(send, limit)


async def _reject(send, limit: int):
    await _json(send, 413, {"error": f"request body is over the {limit / 2**20:g} MB limit "
                                     "for this route; store large inputs elsewhere and pass "
                                     "a link"})


async def _json(send, code: int, body: dict):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(settings: Settings, target=None, supervisor: Supervisor | None = None,
               balanced: bool = False, host: SourceHost | None = None,
               exposed: bool = True) -> FastAPI:
    """The API; `balanced` (load-balancing mode) keeps no queue: a job beyond what the
    child takes now is refused at once (429). `host`: the source host serve() made (it
    owns the signals); else one is made when the app starts. `exposed`: it listens beyond
    loopback (the sockets bound say; unknown counts as yes): the webhook guard's "auto"."""
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        source = host or SourceHost(settings, target, supervisor)
        sup = source.start()
        capacity = (lambda: sup.status.concurrency if sup.status.ready else 0) \
            if balanced else None
        store = JobStore(sup, asyncio.get_running_loop(), settings.result_ttl, settings.worker_id,
                         settings.api_queue_jobs, int(settings.api_queue_mb * 2**20), capacity,
                         webhook_post.Policy(settings, exposed),
                         stream_bound.max_bytes(settings.max_result_mb), settings.max_result_mb)
        state.update(sup=sup, store=store, source=source)
        if settings.reload:
            state["reloader"] = reloader.Reloader(sup, reloader.code_path(sup.target),
                                                  settings)
            state["reloader"].start()
        sweeper = asyncio.create_task(_sweep(store, settings.result_ttl))
        try:
            yield
        finally:
            if "reloader" in state:
                state["reloader"].stop()
            sweeper.cancel()
            await asyncio.get_running_loop().run_in_executor(None, source.stop,
                                                             settings.shutdown_grace)

    # With a token, the docs would describe (and /docs try) routes a stranger cannot use,
    # and give away the endpoint's shape: they are off, like every route but /health and /ping.
    docs = {} if not settings.api_token else {"docs_url": None, "redoc_url": None,
                                              "openapi_url": None}
    app = FastAPI(title="gpu-worker local API", version=__version__, lifespan=lifespan,
                  description="A RunPod serverless endpoint on your machine. Routes also "
                              "answer under /v2/{endpoint_id}/ for the official client.",
                  **docs)

    def store() -> JobStore:
        return state["store"]

    def authorised(request: Request) -> None:
        token = settings.api_token
        if not token:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a valid 'Authorization: Bearer <WORKER_API_TOKEN>' "
                                     "header is required")

    async def job_body(request: Request) -> tuple:
        return parse_job_body(await request.body())

    def record(job_id: str):
        rec = store().get(job_id)
        if rec is None:
            raise HTTPException(404, f"no job with id {job_id!r} (unknown, or expired)")
        return rec

    def refuse_if_down() -> None:
        if state["source"].signalled.is_set():      # stopping: another worker takes it
            raise HTTPException(503, "the worker is stopping", headers={"Retry-After": "1"})
        status = state["sup"].status
        if status.state is not WorkerState.RUNNING:
            raise HTTPException(503, f"the worker cannot run jobs: {status.failure}")

    def submit(request: Request, body: dict, raw: bytes):
        try:
            return store().submit(body, raw, request.headers.get("traceparent"))
        except QueueFull as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from None

    def answer(content: dict | bytes) -> Response:
        """A response that carries a job's result (counted as bytes out)."""
        response = Response(content, media_type="application/json") \
            if isinstance(content, bytes) else _json_response(content)
        state["sup"].metrics.bytes_out.inc(len(response.body))
        return response

    router = APIRouter(dependencies=[Depends(authorised)] if settings.api_token else [],
                       responses=errors(401) if settings.api_token else {})

    @router.post("/run", summary="Queue a job; returns its id at once",
                 openapi_extra=JOB_BODY, responses=errors(400, 413, 429, 503))
    async def run(request: Request):
        body, raw = await job_body(request)
        refuse_if_down()
        rec = submit(request, body, raw)
        return {"id": rec.id, "status": JobState.IN_QUEUE.value}

    @router.post("/runsync", summary="Run a job and wait for its result",
                 openapi_extra=JOB_BODY, responses=errors(400, 413, 429, 503))
    async def runsync(request: Request, wait: int = RUNSYNC_WAIT_MS):
        body, raw = await job_body(request)
        refuse_if_down()
        rec = submit(request, body, raw)
        wait_s = min(max(wait, 1000), 300_000) / 1000.0
        return answer(await store().wait(rec, wait_s))

    @router.api_route("/status/{job_id}", methods=["GET", "POST"], summary="A job's state",
                      responses=errors(404))
    async def status(job_id: str):
        return answer(store().view(record(job_id)))

    @router.api_route("/stream/{job_id}", methods=["GET", "POST"],
                      summary="Chunks a generator produced since the last call",
                      responses=errors(404))
    async def stream(job_id: str):
        return answer(store().drain_stream(record(job_id)))

    @router.post("/cancel/{job_id}", summary="Stop a job (queued or running)",
                 responses=errors(404))
    async def cancel(job_id: str):
        rec = record(job_id)
        if not rec.status.final:
            store().cancel(rec)
            await store().wait(rec, state["sup"].settings.stop_grace + 5)
        return {"id": rec.id, "status": store().view(rec)["status"]}

    @router.get("/metrics", summary="Prometheus metrics (text exposition format)",
                response_class=Response)
    async def metrics():
        text = await asyncio.to_thread(state["sup"].metrics.text)   # it may read NVML
        return Response(text, media_type=CONTENT_TYPE)

    @router.post("/purge-queue", summary="Drop every queued job")
    async def purge_queue():
        removed = await asyncio.get_running_loop().run_in_executor(None, store().purge)
        return {"removed": removed, "status": "completed"}

    public = APIRouter()      # /health and /ping answer without the token

    @public.get("/ping", summary="RunPod's load-balancer probe: 200 ready, 204 starting, "
                                 "503 the worker cannot run jobs", status_code=200,
                responses={204: {"description": "a child is starting"},
                           503: {"description": "the worker cannot run jobs"}})
    async def ping():
        return ping_response(state["sup"].status if "sup" in state else None,
                             "source" in state and state["source"].signalled.is_set())

    @public.get("/health", summary="Job counts and the worker's state; 503 when the worker "
                                   "cannot run jobs (the reason is in worker.failure)")
    async def health():
        body = store().health()
        if "reloader" in state:
            body["reload"] = state["reloader"].view()
        ok = state["sup"].status.state is WorkerState.RUNNING
        return _json_response(body, 200 if ok else 503)

    endpoint_id = settings.endpoint_id
    if endpoint_id:       # the SDK's realtime route: the run's result body, nothing else
        @router.post(f"/{endpoint_id}/realtime", summary="Run a job; its output or error",
                     openapi_extra=JOB_BODY, responses=errors(400, 413, 429, 503))
        async def realtime(request: Request):
            body, raw = await job_body(request)
            refuse_if_down()
            rec = submit(request, body, raw)
            await rec.done.wait()
            return answer(rec.result.body)

    mounted = mount(app, router, public)
    app.state.gpu_worker = state          # the load balancer's /ping port reads it
    app.add_middleware(BodyLimit, table=route_limits(mounted, settings))
    return app


def mount(app: FastAPI, router: APIRouter, public: APIRouter) -> list:
    """The routers at the root and under /v2/{endpoint_id}/ (the official client's
    paths), errors as {"error": ...}; the (router, prefix) pairs mounted."""
    mounted = [(r, prefix) for r in (router, public) for prefix in ("", "/v2/{endpoint_id}")]
    for r, prefix in mounted:
        app.include_router(r, prefix=prefix, **({"generate_unique_id_function": lambda route:
                                                 f"v2_{route.name}"} if prefix else {}))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)
    return mounted


def route_limits(mounted: list, settings: Settings) -> list:
    """Each route's body limit, from the routers as mounted ((router, prefix) pairs): the
    job routes by the settings, every other route SMALL_BODY (it takes no job)."""
    jobs = {"run": int(settings.max_run_mb * 2**20),
            "runsync": int(settings.max_runsync_mb * 2**20),
            "realtime": int(settings.max_runsync_mb * 2**20)}     # it waits, as runsync
    return [(compile_path(prefix + route.path)[0], jobs.get(route.name, SMALL_BODY))
            for r, prefix in mounted for route in r.routes]


def _example_body() -> str:
    """The handler's own ./test_input.json, when it has one, for the curl line."""
    try:
        with open("test_input.json", encoding="utf-8") as f:
            body = json.load(f)
        if isinstance(body, dict) and "input" in body:
            return json.dumps({"input": body["input"]}, ensure_ascii=False).replace("'", "")
    except (OSError, ValueError):
        pass
    return '{"input": {"prompt": "hello"}}'


def ping_response(status, stopping: bool = False) -> Response:
    if stopping:
        return _json_response({"status": "unhealthy", "failure": "the worker is stopping"}, 503)
    code = 204 if status is None else status.ping_code()
    if code == 204:
        return Response(status_code=204)
    body = {"status": "healthy"} if code == 200 else {"status": "unhealthy",
                                                      "failure": status.failure}
    return _json_response(body, code)


def _json_response(content: dict, code: int = 200) -> Response:
    # Outputs are JSON already (the child checked them): skip FastAPI's recursive
    # jsonable_encoder walk.
    return Response(json.dumps(content, ensure_ascii=False).encode(), status_code=code,
                    media_type="application/json")


async def _sweep(store: JobStore, ttl: float) -> None:
    while True:
        await asyncio.sleep(max(0.5, min(60.0, ttl / 2)))
        store.sweep()


def serve(settings: Settings, target) -> int:
    sockets = listen.bind_or_say(settings.api_host, settings.api_port, "worker")
    if sockets is None:
        return 1
    host = SourceHost(settings, target)
    app = create_app(settings, host=host, exposed=listen.beyond_loopback(sockets))
    address = listen.url(sockets)
    auth = " -H 'Authorization: Bearer $WORKER_API_TOKEN'" if settings.api_token else ""
    print(f"--- gpu-worker {__version__} | local API on {address} (docs: {address}/docs) ---\n"
          f"try: curl -s -X POST {address}/runsync{auth} "
          f"-H 'Content-Type: application/json' -d '{_example_body()}'",
          file=sys.stderr, flush=True)
    return run_server(app, settings, host, sockets)


def run_server(app: FastAPI, settings: Settings, host: SourceHost, sockets: list) -> int:
    """uvicorn on `sockets`, the signals left to the source host. A first SIGTERM/SIGINT
    stops the supervisor within WORKER_SHUTDOWN_GRACE (jobs finish, or end FAILED, and the
    requests waiting on them get that answer), then the server. A second stops at once."""
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self):           # uvicorn >= 0.29
            return contextlib.nullcontext()

        def install_signal_handlers(self):   # older uvicorn
            pass

    config = uvicorn.Config(app, host=settings.api_host, port=settings.api_port,
                            log_level="warning", timeout_graceful_shutdown=ANSWER_WAIT_S)
    server = Server(config)

    def first_signal(name: str) -> None:
        try:
            host.stop(settings.shutdown_grace)
        finally:
            config.timeout_graceful_shutdown = max(0.1, host.budget_left(ANSWER_WAIT_S))
            server.should_exit = True

    host.handle_signals(first_signal,
                        f"the server stops; running jobs have {settings.shutdown_grace:g}s "
                        "to finish")
    server.run(sockets=sockets)
    store = app.state.gpu_worker.get("store")
    if store is not None and not store.close(host.stop_by):
        logging.shutdown()        # a webhook still trying must not hold the exit past the
        sys.stdout.flush()        # stop's budget (its pool's threads would be joined)
        os._exit(0)
    return 0
