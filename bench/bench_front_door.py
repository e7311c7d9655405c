"""What the front door costs per request, in-process (no server, no job): a trivial POST
route called as ASGI, µs per call, through
- bare Starlette (the floor);
- FastAPI with the route on routers included at / and /v2/{endpoint_id}/, as the local
  API and the gateway mount theirs;
- the front door (worker/front_door.py: body limit, token router, errors), without and
  with the lane.

    .venv/bin/python bench/bench_front_door.py

Prints figures; asserts nothing.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.applications import Starlette
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker.config import Settings  # noqa: E402
from worker.front_door import new_app, open_door, routers  # noqa: E402

CALLS = 20_000


async def runsync(request: Request, wait: int = 90_000):
    await request.body()
    return Response(b"{}", media_type="application/json")


async def bare(request):
    await request.body()
    return Response(b"{}", media_type="application/json")


def fastapi_included() -> FastAPI:
    app, router = FastAPI(), APIRouter()
    router.add_api_route("/runsync", runsync, methods=["POST"])
    app.include_router(router)
    app.include_router(router, prefix="/v2/{endpoint_id}")
    return app


def front_door(lane: bool) -> FastAPI:
    settings = Settings()
    app = new_app("bench", "bench", None, settings)
    router, public = routers(settings)
    router.add_api_route("/runsync", runsync, methods=["POST"])
    open_door(app, router, public, settings, lane=lane)
    return app


async def per_call(app, path: str) -> float:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2),
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]}

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        pass
    for _ in range(1000):
        await app(dict(scope), receive, send)
    t0 = time.perf_counter()
    for _ in range(CALLS):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - t0) / CALLS * 1e6


async def main() -> None:
    apps = [("bare Starlette", Starlette(routes=[Route("/runsync", bare, methods=["POST"])]),
             ("/runsync",)),
            ("FastAPI, routers included at / and /v2/{endpoint_id}/", fastapi_included(),
             ("/runsync", "/v2/ep/runsync")),
            ("the front door without the lane", front_door(False),
             ("/runsync", "/v2/ep/runsync")),
            ("the front door with the lane", front_door(True),
             ("/runsync", "/v2/ep/runsync"))]
    for label, app, paths in apps:
        figures = []
        for path in paths:
            best = min([await per_call(app, path) for _ in range(3)])
            figures.append(f"{path} {best:.1f} us")
        figures = ", ".join(figures)
        print(f"{label}: {figures} per call (best of 3 x {CALLS:,})", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
