"""Which mode a worker runs in, and the checks across settings, in one place.

WORKER_MODE names the mode; `auto` picks it as runpod-python does — the local API if
asked for, then the realtime port, then the RunPod queue when RUNPOD_WEBHOOK_GET_JOB is set
and no test input is given, else the one-shot test — with load balancing and a Redis
Streams endpoint (ours) before the RunPod queue. Every check that involves more than one
setting runs here, before anything starts; a refusal is one line.
"""
from __future__ import annotations

import dataclasses
import os
from urllib.parse import urlsplit

from .config import Settings

LABELS = {"api": "the local API", "realtime": "the local API on the realtime port",
          "load_balancer": "a RunPod load-balancing endpoint", "runpod": "the RunPod queue",
          "redis": "an endpoint on Redis Streams", "test": "the one-shot test"}


def infer(s: Settings) -> tuple[str, str]:
    """The mode the settings imply, and why (for `worker config`)."""
    queue = bool(s.runpod_get_job) and s.test_input is None
    if s.serve_api:
        return "api", "--rp_serve_api, `worker serve` or WORKER_SERVE_API"
    if s.realtime_port:
        return "realtime", "RUNPOD_REALTIME_PORT is set"
    if s.load_balancer:
        return "load_balancer", "--load_balancer or WORKER_LOAD_BALANCER"
    if s.port_health and not queue and s.test_input is None:
        return "load_balancer", "PORT_HEALTH is set outside the RunPod queue"
    if s.queue_url and s.test_input is None:
        return "redis", "WORKER_QUEUE_URL is set"
    if queue:
        return "runpod", "RUNPOD_WEBHOOK_GET_JOB is set and no --test_input"
    if s.test_input is not None:
        return "test", "--test_input is given"
    return "test", "no job source is set"


def pick(s: Settings) -> tuple[str, str]:
    """The mode and why: WORKER_MODE when it names one, else what the settings imply."""
    if s.mode != "auto":
        return s.mode, "WORKER_MODE"
    return infer(s)


# What each mode needs, and the settings that ask for another mode.
NEEDS = {"realtime": (("realtime_port", "RUNPOD_REALTIME_PORT"),),
         "runpod": (("runpod_get_job", "RUNPOD_WEBHOOK_GET_JOB"),),
         "redis": (("queue_url", "WORKER_QUEUE_URL"), ("queue_endpoint", "WORKER_ENDPOINT"))}


def refusal(s: Settings) -> str | None:
    """Why these settings cannot run as given, in one line (or None)."""
    mode, _ = pick(s)
    if s.mode != "auto":
        for name, env in NEEDS.get(mode, ()):
            if not getattr(s, name):
                return f"WORKER_MODE={mode} needs {env}"
        asks = ((s.serve_api, ("api", "realtime"), "--rp_serve_api asks for the local API"),
                (s.load_balancer, ("load_balancer",), "--load_balancer asks for load "
                                                      "balancing"),
                (s.realtime_port, ("realtime", "api"), "RUNPOD_REALTIME_PORT asks for the "
                                                       "realtime mode"),
                (s.test_input is not None, ("test",), "--test_input asks for the one-shot "
                                                      "test"))
        for asked, modes, what in asks:
            if asked and mode not in modes:
                return f"WORKER_MODE={mode}, but {what}"
    if mode == "redis":
        return _queue_refusal(s)
    return reload_refusal(s, mode)


def _queue_refusal(s: Settings) -> str | None:
    """What a Redis endpoint's worker would refuse at its start, said before it."""
    from .fleet.keys import Keys
    if not s.queue_endpoint:
        return ("WORKER_QUEUE_URL needs WORKER_ENDPOINT, the endpoint's name on the queue "
                "(no default: two handlers never share a stream by accident)")
    if urlsplit(s.queue_url).scheme not in ("redis", "rediss"):
        return "WORKER_QUEUE_URL must be a redis:// or rediss:// URL"
    try:
        Keys(s.queue_endpoint)
    except ValueError as exc:
        return f"WORKER_ENDPOINT: {exc}"
    if s.queue_password_file and not os.access(s.queue_password_file, os.R_OK):
        return "WORKER_QUEUE_PASSWORD_FILE cannot be read"
    return reload_refusal(s, "redis")


def settle(s: Settings) -> tuple[Settings, dict]:
    """The settings a worker runs with, and why each that changed did (for `worker config`
    and the logged table): the mode named (so `checks=auto` can follow it in the child),
    the realtime port's address, and what --reload and --watch turn off."""
    mode, why = pick(s)
    changes = {"mode": (mode, why if s.mode == "auto" else None)}
    if mode == "realtime":
        changes.update(api_host=("0.0.0.0", "the realtime mode listens on every interface"),
                       api_port=(s.realtime_port, "RUNPOD_REALTIME_PORT"))
    if s.reload or s.watch:
        flag = "--reload" if s.reload else "--watch"
        changes.update(reload=(True, flag), spare=("off", f"{flag} (a spare would run old "
                                                   f"code)"),
                       warm_refresh=(False, f"{flag} (the forkserver would keep old code)"))
    settled = dataclasses.replace(s, **{k: v for k, (v, _) in changes.items()})
    return settled, {k: why for k, (v, why) in changes.items()
                     if why is not None and getattr(s, k) != v}


def reload_refusal(s: Settings, mode: str) -> str | None:
    if not (s.reload or s.watch):
        return None
    api = mode in ("api", "realtime", "load_balancer")
    if s.reload and mode in ("runpod", "redis"):
        return ("--reload serves the local API and load-balancing modes; a queue worker "
                "takes new code by a new deploy (drop --reload / WORKER_RELOAD)")
    if s.reload and not api and not s.watch:
        return ("--reload serves the local API (add --rp_serve_api, or `worker serve`); "
                "the one-shot test runs again on every save with --watch")
    if s.watch and mode != "test":
        return "--watch reruns the one-shot test; the local API reloads with --reload"
    return None
