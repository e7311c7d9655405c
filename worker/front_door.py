"""The HTTP front door: what the local API and the gateway do the same way in front of
their routes. Each builds its routes on the two routers `routers` gives (the job routes,
behind the token when there is one; /health and /ping, public), and `open_door` mounts
them at the root and under /v2/{endpoint_id}/ (the official client's paths), answers
errors as {"error": ...}, gives every request a body limit (BodyLimit), and answers the
routes it can without FastAPI's per-request machinery (Lane; FastAPI keeps the schema and
the rest). `Server` runs uvicorn on sockets already bound, with the signals left to the
caller.
"""
from __future__ import annotations

import hmac
import inspect
import json
import re
import threading
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from .config import Settings
from .jobs import MAX_TIMEOUT_MS, JobError, validate_job
from .jsonlimits import JSONRefused, loads
from .sources import webhook_post
from .version import __version__

RUNSYNC_WAIT_MS = 90_000
ANSWER_WAIT_S = 5          # after a stop: to answer the requests in flight
SIGNAL_CHECK_S = 0.1       # the main thread looks for a signal's handler this often
SMALL_BODY = 64 * 1024     # a route that takes no job: no more than this, ever

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


def errors(*codes) -> dict:
    """OpenAPI `responses` for these error codes (each an {"error": ...} body)."""
    return {code: {"description": _WHY[code], **_ERROR} for code in codes}


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


def json_response(content: dict, code: int = 200) -> Response:
    # Outputs are JSON already (the child checked them): skip FastAPI's recursive
    # jsonable_encoder walk.
    return Response(json.dumps(content, ensure_ascii=False).encode(), status_code=code,
                    media_type="application/json")


# --- the app ---------------------------------------------------------------------------

def new_app(title: str, description: str, lifespan, settings: Settings) -> FastAPI:
    """The FastAPI app. With a token, the docs would describe (and /docs try) routes a
    stranger cannot use, and give away the endpoint's shape: they are off, like every
    route but /health and /ping."""
    docs = {} if not settings.api_token else {"docs_url": None, "redoc_url": None,
                                              "openapi_url": None}
    return FastAPI(title=title, version=__version__, lifespan=lifespan,
                   description=description, **docs)


def routers(settings: Settings, private: tuple = (), public: tuple = ()) -> tuple:
    """(the job routes' router: behind 'Authorization: Bearer <WORKER_API_TOKEN>' when a
    token is set; the public router for /health and /ping), each documented with the
    error codes every route of it may answer."""
    token = settings.api_token

    def authorised(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a valid 'Authorization: Bearer <WORKER_API_TOKEN>' "
                                     "header is required")

    authorised.front_door = True        # the one dependency the lane may call itself
    codes = (*private, *((401,) if token else ()))
    return (APIRouter(dependencies=[Depends(authorised)] if token else [],
                      responses=errors(*codes) if codes else {}),
            APIRouter(responses=errors(*public) if public else {}))


def open_door(app: FastAPI, router: APIRouter, public: APIRouter, settings: Settings,
              outer: tuple = (), lane: bool = True) -> None:
    """Mount the routers at the root and under /v2/{endpoint_id}/, answer HTTPException
    as {"error": detail}, and put the lane (`lane`: else every request goes through
    FastAPI alone), BodyLimit, then `outer` (middleware classes, outermost last) in front
    of every route."""
    mounted = [(r, prefix) for r in (router, public) for prefix in ("", "/v2/{endpoint_id}")]
    for r, prefix in mounted:
        app.include_router(r, prefix=prefix, **({"generate_unique_id_function": lambda route:
                                                 f"v2_{route.name}"} if prefix else {}))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)

    if lane:
        app.add_middleware(Lane, routes=lane_routes(mounted), fastapi=app)
    app.add_middleware(BodyLimit, table=route_limits(mounted, settings))
    for middleware in outer:
        app.add_middleware(middleware)


def route_limits(mounted: list, settings: Settings) -> list:
    """Each route's body limit, from the routers as mounted ((router, prefix) pairs): the
    job routes by the settings, every other route SMALL_BODY (it takes no job)."""
    jobs = {"run": int(settings.max_run_mb * 2**20),
            "runsync": int(settings.max_runsync_mb * 2**20),
            "realtime": int(settings.max_runsync_mb * 2**20)}     # it waits, as runsync
    return [(compile_path(prefix + route.path)[0], jobs.get(route.name, SMALL_BODY))
            for r, prefix in mounted for route in r.routes]


# --- the lane: the routes answered without FastAPI's per-request machinery ---------------

@dataclass(frozen=True)
class _Direct:
    """A route the lane calls itself: its endpoint, what its parameters are."""
    regex: re.Pattern
    methods: frozenset
    route: APIRoute
    request_name: str | None
    path_names: tuple
    ints: tuple                 # ((query name, default), ...)
    checks: tuple               # dependencies: the front door's token check, or none


_INT = re.compile(r"-?[0-9]{1,18}")


def lane_routes(mounted: list) -> list:
    """The routes, as mounted, whose answer the lane can give as FastAPI would: an async
    endpoint taking the request, plain str path parameters and plain int query
    parameters with a default (no constraint, no alias), no other dependency than the
    front door's token check, no body, response model or response class of its own, no
    status code but 200. Any other route is FastAPI's alone."""
    out = []
    for r, prefix in mounted:
        for route in r.routes:
            d = getattr(route, "dependant", None)
            if d is None or not inspect.iscoroutinefunction(route.endpoint) or \
                    d.body_params or d.header_params or d.cookie_params or \
                    d.background_tasks_param_name or d.response_param_name or \
                    route.response_model is not None or route.status_code not in (None, 200) \
                    or not isinstance(route.response_class, DefaultPlaceholder) or \
                    not all(getattr(sub.call, "front_door", False) for sub in d.dependencies):
                continue
            params = d.path_params + d.query_params
            if any(p.field_info.metadata or p.alias != p.name for p in params) or \
                    any(p.field_info.annotation is not str for p in d.path_params) or \
                    any(p.field_info.annotation is not int or not isinstance(
                        p.field_info.default, int) for p in d.query_params):
                continue
            out.append(_Direct(compile_path(prefix + route.path)[0], frozenset(route.methods),
                               route, d.request_param_name,
                               tuple(p.name for p in d.path_params),
                               tuple((p.name, p.field_info.default) for p in d.query_params),
                               tuple(sub.call for sub in d.dependencies)))
    return out


class Lane:
    """ASGI middleware in front of FastAPI: a request for a route `lane_routes` took
    (path and method, and query values the lane reads as FastAPI would) is answered by
    calling its endpoint directly, with the same token check, the same response classes
    and the app's exception handlers as Starlette looks them up; anything else goes on
    to FastAPI, which still owns the routes' schema (/docs), redirects, 404/405/422, and
    every request while dependency overrides are set or FastAPI's OpenTelemetry is on.
    FastAPI's per-request work (nested routers, dependency solving, its telemetry hooks)
    was most of a trivial /runsync's cost in the parent (docs/benchmarks.md, issue 42)."""

    def __init__(self, app, routes: list, fastapi: FastAPI):
        self.app = app
        self.routes = routes
        self.fastapi = fastapi        # its exception handlers and overrides, read live

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope.get("root_path") and \
                scope.get("fastapi.telemetry") is None and \
                not self.fastapi.dependency_overrides:
            for direct in self.routes:
                match = direct.regex.match(scope["path"])
                if match is not None:
                    if scope["method"] in direct.methods:
                        kwargs = _arguments(direct, scope, match)
                        if kwargs is not None:
                            scope["path_params"] = match.groupdict()  # /v2/{endpoint_id}
                            return await self._call(direct, scope, receive, send, kwargs)
                    break
        await self.app(scope, receive, send)

    async def _call(self, direct: _Direct, scope, receive, send, kwargs: dict):
        scope["route"], scope["endpoint"] = direct.route, direct.route.endpoint
        request = Request(scope, receive, send)
        if direct.request_name:
            kwargs[direct.request_name] = request
        try:
            for check in direct.checks:
                check(request)
            answer = await direct.route.endpoint(**kwargs)
            if not isinstance(answer, Response):
                answer = JSONResponse(jsonable_encoder(answer))
        except Exception as exc:
            handler = _handler(self.fastapi.exception_handlers, exc)
            if handler is None:
                raise                # to the server-error layer, as from FastAPI
            if inspect.iscoroutinefunction(handler):
                answer = await handler(request, exc)
            else:
                answer = await run_in_threadpool(handler, request, exc)
            if answer is None:
                return
        await answer(scope, receive, send)


def _handler(handlers: dict, exc: Exception):
    """The app's handler for `exc` as Starlette's exception layer finds it: by status
    code for an HTTPException, else by class along the MRO; never the 500/Exception
    handler (that one is the server-error layer's, outside every middleware)."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code != 500:
        found = handlers.get(exc.status_code)
        if found is not None:
            return found
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


def _arguments(direct: _Direct, scope, match) -> dict | None:
    """The endpoint's keyword arguments, or None where FastAPI must read them (a query
    value it would refuse or read differently: FastAPI answers that)."""
    kwargs = {name: match.group(name) for name in direct.path_names}
    if direct.ints:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        for name, default in direct.ints:
            given = [v for k, v in query if k == name]
            if len(given) > 1 or (given and not _INT.fullmatch(given[0])):
                return None
            kwargs[name] = int(given[0]) if given else default
    return kwargs


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit with 413 before buffering them
    (Content-Length checked up front; chunked bodies counted as they arrive). Every
    request has a limit: its route's (from the router: `route_limits`), or SMALL_BODY for
    routes that take no job and for paths no route matches.

    Not FastAPI's own `max_body_size` (0.16x): it answers a bare "Content Too Large"
    that names neither the limit nor what to do, and needs a FastAPI of this year."""

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


# --- the server ------------------------------------------------------------------------

class Server:
    """uvicorn serving an app on sockets already bound, from a thread of its own: uvicorn
    installs no signal handler off the main thread (its changelog, 0.13.0: "Skip
    installation of signal handlers when not in the main thread. Allows using Server in
    multithreaded contexts without having to override .install_signal_handlers()"), so
    SIGTERM and SIGINT stay the caller's, with no subclass of uvicorn.Server. The caller's handler
    calls `stop`; `run` returns once the server has ended."""

    def __init__(self, app: FastAPI, answer_wait_s: float):
        import uvicorn
        self._config = uvicorn.Config(app, log_level="warning",
                                      timeout_graceful_shutdown=answer_wait_s)
        self._server = uvicorn.Server(self._config)

    def stop(self, answer_wait_s: float | None = None) -> None:
        """End the server: no new connection; requests in flight get `answer_wait_s`
        (else the wait it was made with) to be answered."""
        if answer_wait_s is not None:
            self._config.timeout_graceful_shutdown = answer_wait_s
        self._server.should_exit = True

    def run(self, sockets: list) -> None:
        """Serve until stopped. The main thread waits here; an exception that ended the
        server is raised here."""
        ended: list = []
        done = threading.Event()

        def serve():
            try:
                self._server.run(sockets=sockets)
            except BaseException as exc:      # noqa: BLE001 - raised in the caller's thread
                ended.append(exc)
            finally:
                done.set()
        threading.Thread(target=serve, name="gpu-worker-http", daemon=True).start()
        # A signal's Python handler runs only in the main thread, between bytecodes: a
        # wait without a timeout would sleep through a signal the kernel gave to another
        # thread. Waking as often as uvicorn's own loop did (0.1 s) keeps it as prompt.
        # (An event, not Thread.join: a join that a KeyboardInterrupt cut short takes the
        # thread for ended in Python 3.11, and a later join returns at once.)
        try:
            while not done.wait(SIGNAL_CHECK_S):
                pass
        except BaseException:        # e.g. KeyboardInterrupt: the server ends with it
            self.stop()
            done.wait((self._config.timeout_graceful_shutdown or ANSWER_WAIT_S) + 2.0)
            raise
        if ended:
            raise ended[0]
