"""Which mode a worker runs in, and the checks between it and the other settings.

WORKER_MODE names the mode; `auto` picks it as runpod-python does — the local API if
asked for, then the realtime port, then the RunPod queue when RUNPOD_WEBHOOK_GET_JOB is set
and no test input is given, else the one-shot test — with load balancing and a Redis
Streams endpoint (ours) before the RunPod queue. What would stop a worker at its start in
the mode picked (a missing setting, one asking for another mode, the Redis URL, the child
user, --reload on a queue) is found here first, so `worker config` says it too; a refusal
is one line. What any one value may be is setting_rules.py.
"""
from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from .config import Settings, SettingsError

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
    if s.run_mode != "auto":
        return s.run_mode, "WORKER_MODE"
    return infer(s)


# Settings that ask for a mode: when another is picked, each is named as not used.
ASKS = (("serve_api", "api", "--rp_serve_api"), ("realtime_port", "realtime",
                                                 "RUNPOD_REALTIME_PORT"),
        ("load_balancer", "load_balancer", "--load_balancer"),
        ("queue_url", "redis", "WORKER_QUEUE_URL"), ("test_input", "test", "--test_input"))


def _asked(s: Settings) -> list[tuple[str, str]]:
    """(mode, name) of each setting given that asks for a mode."""
    return [(m, name) for field, m, name in ASKS
            if getattr(s, field) not in (None, False, 0, "")]


def _fits(asked: str, mode: str) -> bool:
    """The realtime mode is the local API on another port: each fits the other's ask."""
    return asked == mode or {asked, mode} == {"api", "realtime"}


def unused(s: Settings) -> list[str]:
    """A line for each setting that asks for a mode the worker will not run in."""
    mode, why = pick(s)
    return [f"{name} is not used: the worker runs {LABELS[mode]} ({why})"
            for m, name in _asked(s) if not _fits(m, mode)]


# What each mode needs, and the settings that ask for another mode.
NEEDS = {"realtime": (("realtime_port", "RUNPOD_REALTIME_PORT"),),
         "runpod": (("runpod_get_job", "RUNPOD_WEBHOOK_GET_JOB"),),
         "redis": (("queue_url", "WORKER_QUEUE_URL"), ("queue_endpoint", "WORKER_ENDPOINT"))}


def refusal(s: Settings) -> str | None:
    """Why these settings cannot run as given, in one line (or None)."""
    mode, _ = pick(s)
    if s.run_mode != "auto":
        for name, env in NEEDS.get(mode, ()):
            if not getattr(s, name):
                return f"WORKER_MODE={mode} needs {env}"
        for m, name in _asked(s):       # a queue URL it does not use is only named
            if not _fits(m, mode) and m != "redis":
                return f"WORKER_MODE={mode}, but {name} asks for {LABELS[m]}"
    if s.child_user:
        from . import hardening
        try:
            hardening.check_user(s.child_user)
        except RuntimeError as exc:
            return str(exc)
    served = {"load_balancer": (s.port, s.port_health), "realtime": (s.realtime_port,),
              "api": (s.api_port,)}.get(mode, ())
    if s.metrics_port and s.metrics_port in served:
        return f"WORKER_METRICS_PORT={s.metrics_port} is a port the {mode} mode serves on"
    if mode == "api" and not s.api_port:
        return "WORKER_API_PORT=0: the local API needs a port (1-65535)"
    if mode == "runpod" and not _http_url(s.runpod_get_job):
        return "RUNPOD_WEBHOOK_GET_JOB must be an http:// or https:// URL"
    if mode == "redis":
        return _queue_refusal(s)
    return reload_refusal(s, mode)


def _http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _queue_refusal(s: Settings) -> str | None:
    """What a Redis endpoint's worker refuses at its start (the same checks), said before."""
    from .fleet import connect
    try:
        connect.worker_keys(s)
        connect.check_url(s)
    except SettingsError as exc:
        return str(exc)
    return reload_refusal(s, "redis")


def settle(s: Settings) -> tuple[Settings, dict]:
    """The settings a worker runs with, and why each that changed did (for `worker config`
    and the logged table): the mode named (so `checks=auto` can follow it in the child),
    the realtime port's address, and what --reload and --watch turn off."""
    mode, why = pick(s)
    changes = {"run_mode": (mode, why if s.run_mode == "auto" else None)}
    if mode in ("api", "realtime"):
        changes["serve_api"] = (True, f"the {mode} mode serves the local API")
    if mode == "realtime":
        changes.update(api_host=("0.0.0.0", "the realtime mode listens on every interface"),
                       api_port=(s.realtime_port, "RUNPOD_REALTIME_PORT"))
    if mode == "load_balancer":
        changes.update(api_host=("0.0.0.0", "load balancing listens on every interface"),
                       api_port=(s.port, "PORT"))
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
