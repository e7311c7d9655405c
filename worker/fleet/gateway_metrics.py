"""The gateway's Prometheus metrics: requests by route and code, their latency, and —
read from Redis when scraped — each endpoint's queue depth, jobs by state and workers
alive."""
from __future__ import annotations

import json
import time

from fastapi.responses import Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

PREFIX = "gpu_worker_gateway_"


class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(PREFIX + "requests", "HTTP requests by route and status "
                                "code", ["route", "code"], registry=r)
        self.latency = Histogram(PREFIX + "request_seconds", "Time to answer a request, by "
                                 "route (runsync includes the job's run)", ["route"],
                                 registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1,
                                                      .25, .5, 1, 2.5, 5, 10, 30, 90))
        self.depth = Gauge(PREFIX + "queue_depth", "Jobs queued or running", ["endpoint"],
                           registry=r)
        self.jobs = Gauge(PREFIX + "jobs", "Jobs by state (final states counted since the "
                          "endpoint began)", ["endpoint", "state"], registry=r)
        self.alive = Gauge(PREFIX + "workers_alive", "Workers seen in the last 10 s",
                           ["endpoint"], registry=r)
        self.dead = Gauge(PREFIX + "dead_letters", "Entries of the dead-letter stream",
                          ["endpoint"], registry=r)

    @property
    def Timed(self):
        """An ASGI middleware class that counts and times each request (a plain one: the
        decorator kind costs a task and a stream per request)."""
        metrics = self

        class Timed:
            def __init__(self, app):
                self.app = app

            async def __call__(self, scope, receive, send):
                if scope["type"] != "http":
                    return await self.app(scope, receive, send)
                t0 = time.perf_counter()
                code = [500]

                async def watched(message):
                    if message["type"] == "http.response.start":
                        code[0] = message["status"]
                    await send(message)
                try:
                    await self.app(scope, receive, watched)
                finally:
                    name = getattr(scope.get("route"), "name", "unknown")
                    metrics.requests.labels(name, str(code[0])).inc()
                    metrics.latency.labels(name).observe(time.perf_counter() - t0)
        return Timed

    @staticmethod
    def answer(content: dict) -> Response:
        # Outputs are JSON already (a worker stored them): no recursive encoder walk.
        return Response(json.dumps(content, ensure_ascii=False).encode(),
                        media_type="application/json")

    async def render(self, stores) -> tuple:
        for store in stores:
            name = store.keys.endpoint
            try:
                h = await store.health()
            except Exception:   # noqa: BLE001 - the queue is away: the request metrics stay
                continue
            self.depth.labels(name).set(h["queue"]["depth"])
            self.alive.labels(name).set(h["workers"]["alive"])
            self.dead.labels(name).set(h["queue"]["deadLetters"])
            for state, value in h["jobs"].items():
                if state != "retried":
                    self.jobs.labels(name, state).set(value)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
