"""Prometheus metrics (prometheus-client), in the parent only.

Three kinds. What the supervisor's loop sees happen (jobs ending, children starting) is
tallied in plain numbers by that one thread (LoopTally: no lock on a job's path) and
turned into counters and histograms when scraped. What the sources see (posts, webhooks,
bytes, delivery times) uses prometheus-client's own metrics, which lock, since several
threads write them. What *is* (jobs in flight, each child's state, GPU memory and
utilisation) is read at scrape time from the published Status and the memory probe, so it
costs nothing between scrapes. Each supervisor has its own registry: several workers in
one process (the tests) never share a series.
"""
from __future__ import annotations

import bisect
import logging
import threading
from typing import Any, Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                   HistogramMetricFamily, StateSetMetricFamily)
from prometheus_client.utils import floatToGoString

from ..jobs import JobResult
from .status import Status, WorkerState

log = logging.getLogger("worker")

prometheus_client.disable_created_metrics()     # no *_created series: half the lines, no use
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# Seconds: a 5 ms handler to an hour-long fine-tune.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
           1800, 3600)
MB = 2**20


class Metrics:
    def __init__(self, status: Callable[[], Status], probe: Any):
        r = self.registry = CollectorRegistry()
        self.loop = LoopTally()              # written by the supervisor's loop alone
        r.register(_Counted(self.loop, status))
        self.delivery_seconds = Histogram(
            "gpu_worker_job_delivery_seconds", "From a job's end to its result delivered: "
            "the RunPod result post, or the webhook.", ["via"], buckets=BUCKETS, registry=r)
        self.posts = Counter(
            "gpu_worker_result_posts", "Tries of posts to the RunPod queue (kind done, "
            "stream, progress) and of webhooks (kind webhook), by outcome: delivered, "
            "retry, refused, undelivered.", ["kind", "outcome"], registry=r)
        self.payload_bytes = Counter(
            "gpu_worker_payload_bytes", "Bytes of job bodies received (in) and of result "
            "bodies sent (out: posts, HTTP answers, webhooks).", ["direction"], registry=r)
        self.bytes_in = self.payload_bytes.labels("in")
        self.bytes_out = self.payload_bytes.labels("out")
        r.register(_Now(status, probe))
        prometheus_client.ProcessCollector(registry=r)    # the parent's CPU, memory, fds
        self._server = None

    # --- what happens (the sources' threads: prometheus-client's locked metrics) ------

    def delivered(self, via: str, seconds: float) -> None:
        self.delivery_seconds.labels(via).observe(seconds)

    def post(self, kind: str, outcome: str) -> None:
        self.posts.labels(kind, outcome).inc()

    # --- serving ---------------------------------------------------------------------------

    def text(self) -> bytes:
        """The exposition text (what /metrics answers)."""
        return prometheus_client.generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a port of its own (WORKER_METRICS_PORT), in a daemon thread. A
        port that cannot be opened is logged: the worker runs its jobs without it."""
        try:
            self._server, _ = prometheus_client.start_http_server(
                port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("metrics port %s:%d could not be opened (%s); serving no metrics "
                      "there (WORKER_METRICS_PORT)", host, port, exc)
            return
        log.info("metrics on http://%s:%d/metrics", host, self._server.server_port)

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()


class LoopTally:
    """What the supervisor's loop sees happen: jobs ending, children starting and getting
    ready. One writer (the loop) and plain numbers: no lock on a job's path; the scrape
    copies them (a copy of a list or dict is one step under the GIL)."""

    def __init__(self):
        self.jobs: dict = {}             # (state, reason) -> jobs
        self.starts: dict = {}           # cause -> children started
        self.setup_wait_s = 0.0
        self.queue, self.execution, self.setup = _Buckets(), _Buckets(), _Buckets()

    def ended(self, result: JobResult) -> None:
        key = (result.state.value, result.reason.value)
        self.jobs[key] = self.jobs.get(key, 0) + 1
        if result.ran:
            self.queue.observe(result.delay_ms / 1000)
            self.execution.observe(result.execution_ms / 1000)
            self.setup_wait_s += result.setup_wait_ms / 1000

    def started(self, cause: str) -> None:
        self.starts[cause] = self.starts.get(cause, 0) + 1


class _Buckets:
    """A histogram's counts per bucket (not cumulative) and sum."""

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)      # the last: over the largest bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def family(self, name: str, text: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.sum
        buckets, seen = [], 0
        for bound, n in zip([*map(floatToGoString, BUCKETS), "+Inf"], counts):
            seen += n
            buckets.append((bound, seen))
        return HistogramMetricFamily(name, text, buckets=buckets, sum_value=total)


class _Counted:
    """The loop's tallies, and the jobs received from the published status."""

    def __init__(self, tally: LoopTally, status: Callable[[], Status]):
        self._tally = tally
        self._status = status

    def collect(self):
        t = self._tally
        jobs = CounterMetricFamily("gpu_worker_jobs", "Jobs that reached their final state, "
                                   "by state and reason.", labels=["state", "reason"])
        for (state, reason), n in sorted(dict(t.jobs).items()):
            jobs.add_metric([state, reason], n)
        yield jobs
        yield CounterMetricFamily("gpu_worker_jobs_received", "Jobs handed to the worker "
                                  "by its source (queue take, HTTP, one-shot).",
                                  value=self._status().received)
        yield t.queue.family("gpu_worker_job_queue_seconds", "From a job's arrival to its "
                             "start in a child (RunPod's delayTime).")
        yield CounterMetricFamily(
            "gpu_worker_job_setup_wait_seconds", "Of the jobs' queue time, the seconds they "
            "waited with no child ready (a first start, a refresh, a crash).",
            value=t.setup_wait_s)
        yield t.execution.family("gpu_worker_job_execution_seconds", "From a job's start in "
                                 "a child to its end (RunPod's executionTime).")
        starts = CounterMetricFamily(
            "gpu_worker_child_starts", "Children started, by why: first, refresh, recycle, "
            "memory, cuda_error, timeout, cancel, crash, hung, setup_failed, gpu, error, lost, "
            "spare (a spare built; its promotion starts nothing), refresh_cold, "
            "warm_off.", labels=["cause"])
        for cause, n in sorted(dict(t.starts).items()):
            starts.add_metric([cause], n)
        yield starts
        yield t.setup.family("gpu_worker_child_setup_seconds", "From a child's start to its "
                             "ready (the handler module imported, start() called).")
        spares = {"gpu_worker_spare_promotions": (
            "Times the slot's spare child took over from the active one (WORKER_SPARE).",
            "promotions"), "gpu_worker_replacements_without_spare": (
            "Times the slot's active child had to go with no spare ready (it was still "
            "setting up, or had failed).", "replaced_without_spare")}
        for name, (text, key) in spares.items():
            family = CounterMetricFamily(name, text, labels=["child"])
            for c in self._status().children:
                family.add_metric([str(c.slot)], (c.spare or {}).get(key, 0))
            yield family


class _Now:
    """The gauges, read when scraped: jobs in flight and queued, the worker's and each
    child's state, memory from the heartbeat and from the probe (NVML: per GPU, under
    the child that holds it)."""

    def __init__(self, status: Callable[[], Status], probe: Any):
        self._status = status
        self._probe = probe

    def collect(self):
        s = self._status()
        yield StateSetMetricFamily("gpu_worker_state", "The worker's state.",
                                   {w.value: s.state is w for w in WorkerState})
        yield _gauge("gpu_worker_jobs_queued", "Jobs waiting for a child.", s.pending)
        yield _gauge("gpu_worker_jobs_in_flight", "Jobs running in children.",
                     len(s.running))
        per_child = {
            "gpu_worker_child_up": ("1 when the child is ready or busy.",
                                    lambda c: int(c.ready)),
            "gpu_worker_child_out_of_service": (
                "1 when the child's place is out of service (setup failures, its restart "
                "breaker).", lambda c: int(c.out is not None)),
            "gpu_worker_child_jobs_in_flight": ("Jobs running in the child.",
                                                lambda c: len(c.running)),
            "gpu_worker_child_breaker_deaths": (
                "Deaths counted by the child's restart breaker (WORKER_RESTART_LIMIT trips "
                "it); reset by any finished job.", lambda c: c.deaths),
            "gpu_worker_child_lost": (
                "Children in this place declared lost: not seen to exit within their "
                "deadline after SIGKILL (stuck in the kernel?).", lambda c: c.lost),
            "gpu_worker_child_rss_bytes": ("The child's resident memory (its heartbeat).",
                                           lambda c: c.rss_bytes),
            "gpu_worker_child_torch_reserved_bytes": (
                "Memory torch's CUDA allocator holds in the child (its heartbeat).",
                lambda c: (c.torch or {}).get("reserved_mb", 0.0) * MB),
        }
        for name, (text, value) in per_child.items():
            family = GaugeMetricFamily(name, text, labels=["child"])
            for c in s.children:
                family.add_metric([str(c.slot)], value(c))
            yield family
        yield from self._devices(s)

    def _devices(self, s: Status):
        try:
            reading = self._probe.read(None)
        except Exception as exc:      # noqa: BLE001 - a scrape must never break the worker
            log.warning("metrics: the memory probe failed: %s", exc)
            return
        if reading.cgroup_mb is not None:
            yield _gauge("gpu_worker_cgroup_memory_bytes", "The container's memory in use "
                         "(cgroup v2 memory.current).", reading.cgroup_mb * MB)
        if reading.cgroup_limit_mb is not None:
            yield _gauge("gpu_worker_cgroup_memory_limit_bytes", "The container's memory "
                         "limit (memory.max).", reading.cgroup_limit_mb * MB)
        if not reading.devices:
            return
        fields = {
            "gpu_worker_gpu_memory_used_bytes": ("GPU memory in use (NVML).",
                                                 lambda d: d.used_mb * MB),
            "gpu_worker_gpu_memory_total_bytes": ("GPU memory (NVML).",
                                                  lambda d: d.total_mb * MB),
            "gpu_worker_gpu_utilization_ratio": ("GPU utilisation, 0-1 (NVML, over its last "
                                                 "sample period).",
                                                 lambda d: None if d.util_pct is None
                                                 else d.util_pct / 100),
            "gpu_worker_gpu_temperature_celsius": ("GPU temperature (NVML).",
                                                   lambda d: d.temp_c),
            "gpu_worker_gpu_power_watts": ("GPU power draw (NVML).", lambda d: d.power_w),
        }
        holders = [(str(c.slot), reading.only(c.devices).devices) for c in s.children]
        for name, (text, value) in fields.items():
            family = GaugeMetricFamily(name, text, labels=["child", "gpu", "index"])
            for child, devices in holders:
                for d in devices:
                    v = value(d)
                    if v is not None:
                        family.add_metric([child, d.uuid, str(d.index)], v)
            yield family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)
