"""`python -m worker gateway`: the RunPod endpoint API in front of Redis Streams.

/run, /runsync, /status, /stream, /cancel, /purge-queue, /health and /metrics under
/v2/{endpoint}/ for each endpoint it serves (WORKER_ENDPOINT, comma-separated; any other
is a 404) and, for the first one, the short forms. The local API's body limits, token,
webhook checks and OpenAPI. It holds no state: replicas behind a load balancer serve one
endpoint. An `Idempotency-Key` header makes a retried /run or /runsync return the job
the first try made. Redis out of reach: 503 with Retry-After.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from .. import logs, redaction
from ..config import Settings, SettingsError
from ..front_door import ANSWER_WAIT_S, JOB_BODY, RUNSYNC_WAIT_MS, Server, errors, new_app, \
    open_door, parse_job_body, routers
from ..setting_names import names_ok
from ..jobs import JobState
from ..sources import listen
from ..version import __version__
from . import connect
from .gateway_metrics import GatewayMetrics
from .endings import Endings
from .gateway_store import GatewayStore
from .keys import Keys

log = logging.getLogger("worker.gateway")
IDEM_HEADER = "idempotency-key"
RETRY_AFTER_S = 2


def endpoints(settings: Settings) -> list:
    names = [n.strip() for n in settings.queue_endpoint.split(",") if n.strip()]
    if not settings.queue_url or not names:
        raise SettingsError("the gateway needs WORKER_QUEUE_URL and WORKER_ENDPOINT (the "
                            "endpoints it serves, comma-separated)")
    try:
        return [Keys(n) for n in names]
    except ValueError as exc:
        raise SettingsError(f"WORKER_ENDPOINT: {exc}") from None


def create_app(settings: Settings) -> FastAPI:
    import redis
    served = endpoints(settings)
    state: dict = {}
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        r = connect.async_client(settings)
        endings = Endings(r, [k.ended for k in served])
        state["stores"] = {k.endpoint: GatewayStore(r, k, settings.result_ttl, endings)
                           for k in served}
        for store in state["stores"].values():
            try:
                await store.ensure_groups()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("the queue cannot be reached yet (%s); answering 503 until it "
                            "can", type(exc).__name__)
        endings.start()
        try:
            yield
        finally:
            await endings.close()
            await r.aclose(close_connection_pool=True)

    app = new_app("gpu-worker gateway", "RunPod's endpoint API for workers on Redis Streams "
                  "(docs/fleet.md).", lifespan, settings)

    def store(request: Request) -> GatewayStore:
        name = request.path_params.get("endpoint_id") or served[0].endpoint
        found = state["stores"].get(name)
        if found is None:
            raise HTTPException(404, f"no endpoint {name!r} here")
        return found

    def idem_key(request: Request) -> str | None:
        key = request.headers.get(IDEM_HEADER)
        if key is None:
            return None
        if not 1 <= len(key) <= 200 or not key.isprintable():
            raise HTTPException(400, "the Idempotency-Key header must be 1-200 printable "
                                     "characters")
        return key

    async def submit(request: Request) -> tuple:
        body, raw = parse_job_body(await request.body())
        s = store(request)
        job_id, fresh = await s.submit(body, raw, request.headers.get("traceparent"),
                                       idem_key(request))
        return s, job_id, fresh

    async def known(s: GatewayStore, job_id: str) -> dict:
        view = await s.record(job_id)
        if view is None:
            raise HTTPException(404, f"no job with id {job_id!r} (unknown, or expired)")
        return view

    # Every route may answer 404 (an endpoint not served here) and 503 (Redis away).
    router, public = routers(settings, (404, 503), (404, 503))

    @router.post("/run", summary="Queue a job; returns its id at once",
                 openapi_extra=JOB_BODY, responses=errors(400, 413, 503))
    async def run(request: Request):
        s, job_id, fresh = await submit(request)
        status = JobState.IN_QUEUE.value if fresh else (await known(s, job_id))["status"]
        return {"id": job_id, "status": status}

    @router.post("/runsync", summary="Run a job and wait for its result",
                 openapi_extra=JOB_BODY, responses=errors(400, 413, 503))
    async def runsync(request: Request, wait: int = RUNSYNC_WAIT_MS):
        s, job_id, fresh = await submit(request)
        view = await s.wait(job_id, min(max(wait, 1000), 300_000) / 1000.0, fresh)
        return metrics.answer(view if view is not None else await known(s, job_id))

    @router.api_route("/status/{job_id}", methods=["GET", "POST"], summary="A job's state",
                      responses=errors(404))
    async def status(request: Request, job_id: str):
        return metrics.answer(await known(store(request), job_id))

    @router.api_route("/stream/{job_id}", methods=["GET", "POST"],
                      summary="Chunks a generator produced since the last call",
                      responses=errors(404))
    async def stream(request: Request, job_id: str):
        drained = await store(request).drain_stream(job_id)
        if drained is None:
            raise HTTPException(404, f"no job with id {job_id!r} (unknown, or expired)")
        return metrics.answer(drained)

    @router.post("/cancel/{job_id}", summary="Stop a job (queued or running)",
                 responses=errors(404))
    async def cancel(request: Request, job_id: str):
        s = store(request)
        after = (await s.cancel(job_id)).removeprefix("was:")
        if not after:
            raise HTTPException(404, f"no job with id {job_id!r} (unknown, or expired)")
        if not JobState(after).final:          # its worker stops it and reports
            view = await s.wait(job_id, settings.stop_grace + 5)
            after = view["status"] if view else after
        return {"id": job_id, "status": after}

    @router.post("/purge-queue", summary="Drop every queued job")
    async def purge_queue(request: Request):
        return {"removed": await store(request).purge(), "status": "completed"}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_route():
        text, kind = await metrics.render(state["stores"].values())
        return Response(text, media_type=kind)

    @public.get("/health", summary="Queue depth, workers alive and jobs by state")
    async def health(request: Request):
        return await store(request).health()

    @public.get("/ping", summary="200 while the queue can be reached")
    async def ping(request: Request):
        await state["stores"][served[0].endpoint].r.ping()
        return {"status": "healthy"}

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def queue_down(request: Request, exc: Exception):
        why = "the queue's server is at its maxclients limit" if type(exc).__name__ == \
            "MaxClientsReachedError" else "the queue cannot be reached"
        return JSONResponse({"error": f"{why} ({type(exc).__name__}); retry later"},
                            status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(connect.QueueBusy)
    async def queue_busy(request: Request, exc: Exception):
        if time.monotonic() - state.get("busy_said", -60.0) >= 60:    # once a minute
            state["busy_said"] = time.monotonic()
            log.warning("answering 503 (busy): %s", exc)
        return JSONResponse({"error": f"the gateway is busy: {exc}; retry later"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(redis.ResponseError)
    async def queue_refused(request: Request, exc: Exception):
        # e.g. OOM: a full server under noeviction refuses new jobs, and says so
        log.error("the queue refused %s: %s", request.url.path, exc)
        return JSONResponse({"error": f"the queue refused this request "
                                      f"({type(exc).__name__}): {exc}"[:500]},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    open_door(app, router, public, settings, outer=(metrics.Timed,))
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worker gateway", description=__doc__.split("\n")[0])
    p.add_argument("--host", default=None, help="address (WORKER_API_HOST; 127.0.0.1)")
    p.add_argument("--port", default=None, help="port (WORKER_API_PORT; 8000)")
    return p


def main(argv: list) -> int:
    ns = parser().parse_args(argv)
    flags = {k: v for k, v in (("api_host", ns.host), ("api_port", ns.port)) if v}
    try:
        settings = Settings.load(flags=flags)
        served = endpoints(settings)
        connect.options(settings)
    except SettingsError as exc:
        print(f"worker gateway: error: {exc}", file=sys.stderr)
        return 2
    if not names_ok(settings, os.environ, "worker gateway"):
        return 2
    logs.configure(settings.log_level)
    redaction.remember(settings.api_token, settings.queue_url)   # never in a line we write
    sockets = listen.bind_or_say(settings.api_host, settings.api_port, "worker gateway")
    if sockets is None:
        return 1
    address = listen.url(sockets)
    print(f"--- gpu-worker {__version__} | gateway on {address} for "
          f"{', '.join(k.endpoint for k in served)} on {redaction.url(settings.queue_url)} "
          f"({time.strftime('%H:%M:%S')}) ---", file=sys.stderr, flush=True)
    server = Server(create_app(settings), ANSWER_WAIT_S)
    for sig in (signal.SIGTERM, signal.SIGINT):      # SIGTERM ends it cleanly, exit 0
        signal.signal(sig, lambda *_: server.stop())
    server.run(sockets)
    return 0
