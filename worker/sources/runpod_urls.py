"""The RunPod worker protocol's URLs, built from the environment as runpod-python 1.12 does.

The SDK only replaces `$ID` / `$RUNPOD_POD_ID` and appends query parameters with `&`;
we do the same, and add a `?` when a URL has none instead of corrupting its path.
"""
from __future__ import annotations

import os
import platform
import uuid
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, urlencode

from ..version import RUNPOD_PROTOCOL_VERSION, __version__


def _append(url: str, params: dict) -> str:
    query = urlencode(params)
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


def user_agent(env: Mapping[str, str]) -> str:
    """The SDK's User-Agent (runpod/user_agent.py) naming the protocol version, with who
    we are as a comment. Not its "(via <coding agent>)" tag: no such agent drives a
    deployed worker. Only printable ASCII is kept: an odd RUNPOD_UA_INTEGRATION must not
    make every request fail."""
    parts = [f"RunPod-Python-SDK/{RUNPOD_PROTOCOL_VERSION}",
             f"({platform.system()} {platform.release()}; {platform.machine()})",
             f"Language/Python {platform.python_version()}"]
    if env.get("RUNPOD_UA_INTEGRATION"):
        parts.append(f"Integration/{env['RUNPOD_UA_INTEGRATION']}")
    parts.append(f"(compatible; gpu-worker/{__version__})")
    return "".join(c for c in " ".join(parts) if " " <= c <= "~")


@dataclass(frozen=True)
class RunPodUrls:
    get_job: str
    post_output: str
    post_stream: str
    ping: str | None
    api_key: str
    worker_id: str
    ping_interval: float       # seconds
    user_agent: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RunPodUrls":
        env = os.environ if env is None else env
        worker_id = env.get("RUNPOD_POD_ID") or str(uuid.uuid4())
        get_job = env.get("RUNPOD_WEBHOOK_GET_JOB", "")
        if not get_job:
            raise ValueError("RUNPOD_WEBHOOK_GET_JOB is not set")

        def templ(name: str) -> str:
            return env.get(name, "").replace("$RUNPOD_POD_ID", worker_id)

        try:
            interval_ms = int(env.get("RUNPOD_PING_INTERVAL", "10000"))
        except ValueError:
            interval_ms = 10000
        return cls(get_job=get_job.replace("$ID", worker_id),
                   post_output=templ("RUNPOD_WEBHOOK_POST_OUTPUT"),
                   post_stream=templ("RUNPOD_WEBHOOK_POST_STREAM"),
                   ping=templ("RUNPOD_WEBHOOK_PING") or None,
                   api_key=env.get("RUNPOD_AI_API_KEY", ""),
                   worker_id=worker_id,
                   # the SDK's integer division turns < 1000 ms into a busy loop; we floor it
                   ping_interval=max(0.2, interval_ms / 1000.0),
                   user_agent=user_agent(env))

    def take(self, batch: int, in_progress: bool) -> str:
        flag = {"job_in_progress": "1" if in_progress else "0"}
        if batch <= 1:
            return _append(self.get_job, flag)
        return _append(self.get_job.replace("/job-take/", "/job-take-batch/"),
                       {"batch_size": batch, **flag})

    def stop(self) -> str | None:
        """The per-job stop channel, or None when GET_JOB has no /job-take/ to derive it."""
        if "/job-take/" not in self.get_job:
            return None
        return self.get_job.replace("/job-take/", "/job-stop/")

    def done(self, job_id: str, is_stream: bool) -> str:
        return _append(self.post_output.replace("$ID", quote(job_id, safe="")),
                       {"isStream": "true" if is_stream else "false"})

    def stream(self, job_id: str) -> str:
        return _append(self.post_stream.replace("$ID", quote(job_id, safe="")),
                       {"isStream": "false"})

    def heartbeat(self, job_ids: list) -> str | None:
        if not (self.ping and self.api_key):
            return None
        params = {"job_id": ",".join(job_ids)} if job_ids else {}
        params["runpod_version"] = RUNPOD_PROTOCOL_VERSION
        return _append(self.ping, params)

    def unhealthy(self, check: str, reason: str) -> str | None:
        if not self.ping:
            return None
        return _append(self.ping, {"status": "unhealthy", "check": check,
                                   "reason": reason[:256],
                                   "runpod_version": RUNPOD_PROTOCOL_VERSION})
