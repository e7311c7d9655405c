"""The local API: a RunPod endpoint on your machine, its routes on the front door
(front_door.py: token, body limits, the server).

Routes at the root and under /v2/{endpoint_id}/, so the official client works unchanged:

    runpod.endpoint_url_base = "http://127.0.0.1:8000/v2"
    runpod.Endpoint("local").run_sync({"prompt": "hi"})

Jobs really queue: /run returns at once and the job runs in the background; /runsync
waits; /cancel stops the job; /stream returns chunks as they come.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from .. import stream_bound
from ..config import Settings
from ..front_door import ANSWER_WAIT_S, JOB_BODY, RUNSYNC_WAIT_MS, Server, errors, \
    json_response, new_app, open_door, parse_job_body, routers
from ..jobs import JobState
from ..parent.metrics import CONTENT_TYPE
from ..parent.supervisor import Supervisor, WorkerState
from ..version import __version__
from .host import SourceHost
from . import listen, reloader, webhook_post
from .job_store import JobStore, QueueFull

log = logging.getLogger("worker.api")

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

    app = new_app("gpu-worker local API", "A RunPod serverless endpoint on your machine. "
                  "Routes also answer under /v2/{endpoint_id}/ for the official client.",
                  lifespan, settings)

    def store() -> JobStore:
        return state["store"]

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
            if isinstance(content, bytes) else json_response(content)
        state["sup"].metrics.bytes_out.inc(len(response.body))
        return response

    router, public = routers(settings)     # /health and /ping answer without the token

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
        return json_response(body, 200 if ok else 503)

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

    open_door(app, router, public, settings)
    app.state.gpu_worker = state          # the load balancer's /ping port reads it
    return app


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
        return json_response({"status": "unhealthy", "failure": "the worker is stopping"}, 503)
    code = 204 if status is None else status.ping_code()
    if code == 204:
        return Response(status_code=204)
    body = {"status": "healthy"} if code == 200 else {"status": "unhealthy",
                                                      "failure": status.failure}
    return json_response(body, code)


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
    """The front door's server on `sockets`, the signals left to the source host. A first
    SIGTERM/SIGINT stops the supervisor within WORKER_SHUTDOWN_GRACE (jobs finish, or end
    FAILED, and the requests waiting on them get that answer), then the server. A second
    stops at once."""
    server = Server(app, ANSWER_WAIT_S)

    def first_signal(name: str) -> None:
        try:
            host.stop(settings.shutdown_grace)
        finally:
            server.stop(max(0.1, host.budget_left(ANSWER_WAIT_S)))

    host.handle_signals(first_signal,
                        f"the server stops; running jobs have {settings.shutdown_grace:g}s "
                        "to finish")
    server.run(sockets)
    store = app.state.gpu_worker.get("store")
    if store is not None and not store.close(host.stop_by):
        logging.shutdown()        # a webhook still trying must not hold the exit past the
        sys.stdout.flush()        # stop's budget (its pool's threads would be joined)
        os._exit(0)
    return 0
