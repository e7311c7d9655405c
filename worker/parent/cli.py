"""`python -m worker handler.py [flags]` and the `worker` console script."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .. import config as cfg
from .. import handover, hardening, logs, redaction, setting_names
from ..targets import ScriptTarget
from ..version import __version__
from . import reaper


def _parser(with_script: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worker", allow_abbrev=False,
        description="Run a RunPod-style handler in a supervised child process. Flags not "
                    "listed here are left in the handler's sys.argv.")
    if with_script:
        p.add_argument("script", help="the handler file (it calls start({'handler': ...}))")
    for row in cfg.describe():
        if not row["flag"]:
            continue
        text = f"{row['help']} (env: {', '.join(row['env']) or '-'})"
        if isinstance(row["default"], bool):
            p.add_argument(row["flag"], dest=row["name"], default=None, action="store_const",
                           const=True, help=text)
        else:
            p.add_argument(row["flag"], dest=row["name"], default=None, metavar="VALUE",
                           help=text)
    p.add_argument("--rp_api_concurrency", default=None, metavar="N",
                   help="accepted for compatibility; the local API runs one process")
    p.add_argument("--version", action="version", version=f"gpu-worker {__version__}")
    return p


def _flags(ns: argparse.Namespace) -> dict:
    names = {row["name"] for row in cfg.describe()}
    return {k: v for k, v in vars(ns).items() if k in names and v is not None}


def main(argv: list | None = None) -> int:
    handover.after_handover()         # `python handler.py` became this process
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "gateway":                # `worker gateway`: no handler here
        from ..fleet import gateway
        return gateway.main(argv[1:])
    serve = bool(argv) and argv[0] == "serve"        # `worker serve handler.py`
    if serve:
        argv = argv[1:]
    ns, rest = _parser(with_script=True).parse_known_args(argv)
    if serve:
        ns.serve_api = True
    script = os.path.abspath(ns.script)
    if not (os.path.isfile(script) or os.path.isfile(os.path.join(script, "__main__.py"))):
        print(f"worker: error: handler file not found: {ns.script}", file=sys.stderr)
        return 2
    try:
        settings = cfg.Settings.load(flags=_flags(ns))
    except cfg.SettingsError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 2
    if not setting_names.names_ok(settings, os.environ):
        return 2
    return run_mode(settings, ScriptTarget(script, rest))



def run(target, argv: list, config: dict) -> int:
    """For start() outside a child with no script to re-execute."""
    ns, _ = _parser(with_script=False).parse_known_args(argv)
    try:
        settings = cfg.Settings.load(flags=_flags(ns), config=config)
    except cfg.SettingsError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 2
    if not setting_names.names_ok(settings, os.environ):
        return 2
    return run_mode(settings, target)


def run_mode(settings: cfg.Settings, target) -> int:
    try:
        return _run_mode(settings, target)
    finally:
        reaper.end_adopted()     # what the last children left: nothing outlives the worker


def _run_mode(settings: cfg.Settings, target) -> int:
    """Pick the job source as runpod-python does — the local API if asked for, then the
    realtime port, then the RunPod queue when RUNPOD_WEBHOOK_GET_JOB is set and no test
    input is given, else the one-shot local test — with load balancing and a Redis Streams
    endpoint (WORKER_QUEUE_URL; ours) before the RunPod queue."""
    logs.configure(settings.log_level)
    reaper.become_subreaper()      # a child whose forkserver died is still ours to watch
    hardening.set_dumpable(False)  # our environ (the queue key) needs CAP_SYS_PTRACE to read
    hardening.bound_execs(settings.child_keep_caps)   # what we start never has them
    redaction.remember(settings.api_token, settings.queue_url,
                       os.environ.get("RUNPOD_AI_API_KEY"))     # never in a line we write
    queue = bool(settings.runpod_get_job) and settings.test_input is None
    fleet = bool(settings.queue_url) and settings.test_input is None
    balanced = not settings.serve_api and not settings.realtime_port and (
        settings.load_balancer or (bool(settings.port_health) and not queue
                                   and settings.test_input is None))
    refusal = reload_refusal(settings, target, queue or fleet, balanced)
    if refusal:
        print(f"worker: error: {refusal}", file=sys.stderr)
        return 2
    if settings.reload or settings.watch:
        settings = dataclasses.replace(settings, reload=True, spare="off", warm_refresh=False)
    if settings.fitness_checks == "auto":      # the SDK runs them in production only
        settings = dataclasses.replace(settings,
                                       fitness_checks="on" if queue or balanced or fleet
                                       else "off")
    if settings.serve_api:
        from ..sources import local_api
        return local_api.serve(settings, target)
    if settings.realtime_port:
        from ..sources import local_api
        return local_api.serve(dataclasses.replace(settings, api_host="0.0.0.0",
                                                   api_port=settings.realtime_port), target)
    if balanced:
        from ..sources import load_balancer
        return load_balancer.serve(settings, target)
    if fleet:
        # RunPod's platform checks (its network check dials a public DNS server) are for
        # RunPod's machines: a self-hosted fleet runs the handler's own checks only.
        os.environ.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
        from ..sources.redis_queue import RedisQueueSource
        try:
            return RedisQueueSource(settings, target).run()
        except cfg.SettingsError as exc:
            print(f"worker: error: {exc}", file=sys.stderr)
            return 2
    if queue:
        from ..sources.runpod import RunPodSource
        return RunPodSource(settings, target).run()
    from ..sources import oneshot, oneshot_watch
    return oneshot_watch.run(settings, target) if settings.watch else \
        oneshot.run(settings, target)


def reload_refusal(settings: cfg.Settings, target, queue: bool, balanced: bool) -> str | None:
    """Why --reload or --watch cannot run as asked, in one line (or None)."""
    if not (settings.reload or settings.watch):
        return None
    api = settings.serve_api or bool(settings.realtime_port) or balanced
    if settings.reload and not api and queue:
        return ("--reload serves the local API and load-balancing modes; a queue worker "
                "takes new code by a new deploy (drop --reload / WORKER_RELOAD)")
    if settings.reload and not api and not settings.watch:
        return ("--reload serves the local API (add --rp_serve_api, or `worker serve`); "
                "the one-shot test runs again on every save with --watch")
    if settings.watch and (api or queue):
        return "--watch reruns the one-shot test; the local API reloads with --reload"
    from ..sources import reload_watch
    from ..sources.reloader import code_path
    if code_path(target) is None:
        return ("--reload and --watch need a handler file or module to watch (a handler "
                "given as a value has none)")
    try:
        reload_watch.load_watchfiles()
    except reload_watch.MissingWatcher as exc:
        return str(exc)
    return None
