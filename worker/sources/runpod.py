"""The RunPod worker protocol (runpod-python 1.12 on the wire), with the fixes its users ask for.

Threads, none of which runs user code (that is in the child):
- take: long-polls job-take (batch when the handler runs several jobs at once), only
  while the child is ready and has room; backs off on empty answers and on errors;
- stop: long-polls job-stop; a listed job is really stopped (task cancel or child stop);
- heartbeat: pings with the ids of the jobs in progress;
- posters and redelivery (runpod_delivery.py): progress, stream chunks and results, in
  order for each job, retried; a result is never dropped;
- the main thread waits for SIGTERM/SIGINT: stop taking jobs, let running ones finish
  within WORKER_SHUTDOWN_GRACE, report them, stop the child, exit 0. A second signal
  stops at once.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from .. import stream_bound, tracing
from ..backoff import Backoff
from ..config import Settings
from ..jobs import SAFE_ID, JobResult, JobState, error_record
from ..parent.supervisor import Supervisor
from ..version import __version__
from . import runpod_batch
from .queue_source import QueueSource
from .runpod_delivery import FLUSH_S, Delivery, Post
from .runpod_take import LEAVE_S, TakeAborted, TakeClient, TakeError
from .runpod_urls import RunPodUrls

log = logging.getLogger("worker.runpod")

STOP_POLL_TIMEOUT = (5.0, 95.0)   # connect, read: the platform long-polls up to 90 s
REPORTED_KEPT = 4096              # ids of jobs reported here, remembered against copies


@dataclass
class _Held:
    job_id: str
    stopped_by_platform: bool = False


class RunPodSource(QueueSource):
    log = log

    def __init__(self, settings: Settings, target, env=None, supervisor: Supervisor | None = None):
        self.urls = RunPodUrls.from_env(env)
        self.worker_name = self.urls.worker_id
        super().__init__(settings, target, supervisor)
        self.finished = threading.Event()      # shutdown is over: the heartbeat ends
        self.held_jobs: dict[str, _Held] = {}
        self._reported: collections.OrderedDict = collections.OrderedDict()  # ended here, newest last
        self.delivery = Delivery(self._session, self._too_large,
                                 lambda: self.stopping.is_set() and self.taking_done.is_set(),
                                 self.sup.metrics,
                                 stream_bound.max_bytes(self.settings.max_result_mb))
        self._taker = TakeClient(self._headers())
        self._empty = Backoff(0.05, 1.0)       # fast "nothing" answers
        self._failing = Backoff(0.5, 10.0)     # takes that failed

    # --- running ---------------------------------------------------------------------------

    def started(self) -> None:
        log.info("--- gpu-worker %s | RunPod worker %s ---", __version__, self.urls.worker_id)
        self.delivery.start(self.stopping)
        self.thread(self._heartbeat, "heartbeat")
        if self.urls.stop() is not None:
            self.thread(self._stop_poll, "stop-poll")
        else:
            log.warning("RUNPOD_WEBHOOK_GET_JOB has no /job-take/: per-job stop is disabled")

    def _headers(self) -> dict:
        """On every request to the platform (take, stop, ping, posts, unhealthy)."""
        return {"Authorization": self.urls.api_key, "User-Agent": self.urls.user_agent}

    def _session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False     # as the SDK's aiohttp session: no proxy/netrc lookups per call
        s.headers.update(self._headers())
        return s

    def shutdown(self) -> int:
        try:
            return super().shutdown()
        finally:
            self.finished.set()

    def leave_take(self, deadline: float) -> None:
        # The take in flight is left (runpod_take: no later take, and an answer on its way
        # is read for up to LEAVE_S), then cut; a job it brought back runs within the
        # grace, or is refused and reported.
        self._taker.leave()
        with self._cond:
            self._cond.wait_for(self.taking_done.is_set,
                                max(0.0, min(LEAVE_S, deadline - time.monotonic())))
        self._taker.abort()

    def close(self, failed: bool) -> int:
        self.delivery.close(self.host.budget_left(FLUSH_S))   # within the stop's budget
        if failed:
            self._report_unhealthy()
            return 1
        log.info("stopped")
        return 0

    def _report_unhealthy(self) -> None:
        reason = self.sup.failure_message or ""
        check = self.sup.state.value
        unfit = re.search(r"fitness check (\S+) failed: (.*)", reason, re.S)
        if unfit:                  # the SDK names the failing check
            check, reason = unfit.group(1), unfit.group(2)
        url = self.urls.unhealthy(check, reason)
        if url:
            try:
                self._session().get(url, timeout=2)
            except requests.RequestException:
                pass

    # --- taking jobs -----------------------------------------------------------------------

    def held(self) -> int:
        return len(self.held_jobs)

    def take(self, room: int) -> bool:
        t0 = time.monotonic()
        try:
            jobs = self._take(room)
        except TakeAborted:
            return False
        except Exception as exc:   # noqa: BLE001 - TakeError, a strange answer...: retry
            if self.stopping.is_set():
                return False
            wait = self._failing.next()
            log.warning("job take failed (%s); retrying in %.1fs", exc, wait)
            self.stopping.wait(wait)
            return True
        self._failing.reset()
        if not jobs:
            # a platform that long-polls answers slowly; a fast "nothing" gets backoff
            if time.monotonic() - t0 < 0.5:
                self.stopping.wait(self._empty.next())
            return True
        self._empty.reset()
        self._take_in(jobs)
        return True

    def _take(self, room: int) -> runpod_batch.Batch | None:
        with self._cond:
            in_progress = bool(self.held_jobs)
        batch = room if self._batching() else 1
        status, content_type, body = self._taker.get(self.urls.take(batch, in_progress))
        if status in (204, 400):
            return None
        if status == 429:
            log.warning("job take: 429 Too Many Requests; waiting 5s")
            self.stopping.wait(5)
            return None
        if status >= 300:
            raise TakeError(f"HTTP {status}")
        if not body or "json" not in content_type:
            return None
        self.sup.metrics.bytes_in.inc(len(body))
        taken = runpod_batch.read(body)
        return taken if taken.jobs or taken.refused or taken.unnamed else None

    def _take_in(self, batch: runpod_batch.Batch) -> None:
        """Each job of a take answer on its own: the readable ones are accepted, then the
        unreadable ones refused (so a readable copy in the same answer wins). An id is
        taken once per answer: a second copy in it is the same delivery, even when the
        first has already ended (it may, before the loop reaches the copy)."""
        taken: set = set()
        for job in batch.jobs:
            job_id = job.get("id") if isinstance(job, dict) else None
            if isinstance(job_id, str) and job_id in taken:
                with self._cond:
                    running = job_id in self.held_jobs
                log.warning("job %s delivered again while it runs; ignoring the copy" if
                            running else "job %s sent twice in one answer; the first copy "
                            "has ended already, the second is ignored", job_id,
                            extra={"job_id": job_id})
                continue
            taken.add(job_id)
            self._accept(job)
        for job_id, why in batch.refused:
            if job_id not in taken:
                taken.add(job_id)
                self._refuse(job_id, why)
        if batch.unnamed:
            log.error("the queue sent %d job(s) that cannot be read and carry no job id "
                      "to report them under (%s); taking again", len(batch.unnamed),
                      batch.unnamed[0][:300])

    def _refuse(self, job_id: str, why: str) -> None:
        """The one rule for a report that is not a run's: a job that cannot be read is
        reported FAILED under its id only if this worker does not hold that id and has not
        reported it (a copy of a running job is the running job's to report; a copy of one
        it reported, after a fast run, would be a second final report)."""
        with self._cond:
            held = job_id in self.held_jobs or job_id in self._reported
        if held:       # its run reports it (or has): a job ends in one final report
            log.warning("the queue sent a copy of a job this worker runs or has reported, "
                        "and the copy cannot be read (%s); ignored", why,
                        extra={"job_id": job_id})
            return
        log.error("the queue sent a job that cannot be read: %s", why,
                  extra={"job_id": job_id})
        if not SAFE_ID.fullmatch(job_id):
            log.error("its id cannot go into a URL: it cannot be reported")
            return
        self._post_final(self.refused(job_id, f"the worker could not read this job: {why}"),
                         None)

    def _batching(self) -> bool:
        return self.sup.status.concurrency > 1

    def _accept(self, job: Any) -> None:
        job_id = job.get("id") if isinstance(job, dict) else None
        if not isinstance(job_id, str) or not SAFE_ID.fullmatch(job_id):
            log.error("the queue sent a job without an id (or with one that cannot go into a "
                      "URL); it cannot be reported: %.200r", job)
            return
        with self._cond:
            if job_id in self.held_jobs:
                log.warning("job %s delivered again while it runs; ignoring the copy", job_id,
                            extra={"job_id": job_id})
                return
            self.held_jobs[job_id] = _Held(job_id)
        tracing.TRACES.remember(job)
        self.submit(job_id, job)

    # --- the job's events (supervisor thread: only queue work) ---------------------------

    def on_progress(self, job_id: str, value: Any) -> None:
        self.delivery.put(Post("progress", job_id, self.urls.done(job_id, False),
                               {"status": "IN_PROGRESS", "output": value}))

    def on_chunk(self, job_id: str, value: Any) -> None:
        self.delivery.put(Post("stream", job_id, self.urls.stream(job_id), {"output": value}))

    def on_result(self, result: JobResult) -> None:
        """The final report of a run this worker holds (the supervisor's one per job)."""
        with self._cond:
            held = self.held_jobs.pop(result.job_id, None)
            self._reported[result.job_id] = None
            if len(self._reported) > REPORTED_KEPT:
                self._reported.popitem(last=False)
            self._cond.notify_all()
        self._post_final(result, held)

    def _post_final(self, result: JobResult, held: _Held | None) -> None:
        if held is not None and held.stopped_by_platform and \
                result.state is JobState.CANCELLED:
            log.info("job stopped by the platform", extra={"job_id": result.job_id})
            return          # as the SDK: the platform asked, it expects no result
        body = dict(result.body)
        if result.refresh and self.settings.refresh_stops_pod:
            body["stopPod"] = True
        streamed = self.sup.status.streams
        post = Post("done", result.job_id, self.urls.done(result.job_id, streamed), body)
        self._fit(post)
        self.delivery.put(post)

    def _fit(self, post: Post) -> None:
        """Over the size limit, the result becomes a FAILED error body (never lost)."""
        limit = self.settings.max_result_mb
        try:
            size = len(post.encoded())
        except Exception as exc:     # noqa: BLE001 - the child checked it; never lose it here
            post.replace({"error": error_record(
                "ResultUnencodable", f"the job's result could not be encoded: "
                f"{type(exc).__name__}: {exc}"[:1000], "", self.urls.worker_id,
                self.settings.hostname)})
            return
        if not limit or size <= limit * 2**20:
            return
        log.error("result of %.1f MiB is over the %g MiB limit", size / 2**20, limit,
                  extra={"job_id": post.job_id})
        post.replace(self._too_large(stream_bound.too_large(size, limit)))

    def _too_large(self, text: str) -> dict:
        return {"error": error_record("ResultTooLarge", text, "", self.urls.worker_id,
                                      self.settings.hostname)}

    # --- heartbeat and stop channel -------------------------------------------------------

    def _heartbeat(self) -> None:
        if not (self.urls.ping and self.urls.api_key):
            log.info("no heartbeat: RUNPOD_WEBHOOK_PING or RUNPOD_AI_API_KEY is not set")
            return
        session = self._session()
        while True:
            with self._cond:
                ids = list(self.held_jobs)
            try:
                session.get(self.urls.heartbeat(ids),
                            timeout=max(2.0, 2 * self.urls.ping_interval))
            except requests.RequestException as exc:
                log.warning("heartbeat failed: %s", exc)
            # Its own clock during the stop's grace too (waiting on `stopping` would return at once
            # once it is set, and ping in a loop).
            if self.finished.wait(self.urls.ping_interval):
                return

    def _stop_poll(self) -> None:
        session = self._session()
        url = self.urls.stop()
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                resp = session.get(url, timeout=STOP_POLL_TIMEOUT)
                ids = []
                if resp.status_code == 429:
                    self.stopping.wait(5)
                    continue
                if resp.status_code == 200 and resp.content:
                    ids = [i for i in resp.json().get("jobsToStop", []) if isinstance(i, str)]
            except Exception as exc:   # noqa: BLE001 - the stop channel must outlive any answer
                log.debug("stop poll failed: %s", exc)
                self.stopping.wait(1)
                continue
            for job_id in ids:
                with self._cond:
                    held = self.held_jobs.get(job_id)
                    if held is not None:
                        held.stopped_by_platform = True
                if held is not None:
                    log.info("the platform asked to stop this job", extra={"job_id": job_id})
                    self.sup.cancel(job_id)
            if not ids and time.monotonic() - t0 < 0.5:
                self.stopping.wait(1)
