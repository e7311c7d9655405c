"""`python -m worker handler.py [flags]` and the `worker` console script."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import config as cfg
from .. import (handover, hardening, logs, redaction, run_modes, setting_names,
               setting_sources, settings_doc, settings_report)
from ..targets import ScriptTarget
from ..version import __version__
from . import reaper


COMMANDS = """commands:
  worker HANDLER.py [flags]         run the handler in the mode WORKER_MODE names, or the
                                    one the settings imply (python -m worker config says)
  worker serve HANDLER.py [flags]   the local HTTP API (as --rp_serve_api)
  worker gateway [--host H] [--port P]
                                    the HTTP front of a Redis Streams fleet (docs/fleet.md)
  worker config [HANDLER.py] [flags] [--json]
                                    every setting in force and where its value came from;
                                    the handler is not imported"""


def _parser(script: str | None, prog: str = "worker") -> argparse.ArgumentParser:
    """The flags of every setting that has one, by topic; `script`: "required",
    "optional" or None (start() called outside a child)."""
    rows = cfg.describe()
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} [HANDLER.py] [flags] [--json]" if prog != "worker" else
        "worker [serve] HANDLER.py [flags]\n       worker gateway [--host H] [--port P]\n"
        "       worker config [HANDLER.py] [flags] [--json]",
        description="Run a RunPod-style handler in a supervised child process. Flags not "
                    "listed here are left in the handler's sys.argv.\n\n" + COMMANDS,
        epilog=f"{len(rows)} settings in all, {sum(not r['flag'] for r in rows)} of them "
               f"from the environment only: `worker config --help` lists every one with its "
               f"variable, `worker config` shows the values in force, docs/configuration.md "
               f"explains each.")
    if script:
        p.add_argument("script", nargs=None if script == "required" else "?",
                       metavar="HANDLER.py", help="the handler file (it calls "
                                                  "start({'handler': ...}))")
    for topic, _, group_rows in settings_doc.rows_by_topic():
        flagged = [row for row in group_rows if row["flag"]]
        group = p.add_argument_group(topic) if flagged else None
        for row in flagged:
            text = f"{row['help']} (env: {', '.join(row['env']) or '-'})"
            if isinstance(row["default"], bool):
                group.add_argument(row["flag"], dest=row["name"], default=None,
                                   action="store_const", const=True, help=text)
            else:
                group.add_argument(row["flag"], dest=row["name"], default=None,
                                   metavar="VALUE", help=text)
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
    if argv and argv[0] == "config":
        return config_command(argv[1:])
    serve = bool(argv) and argv[0] == "serve"        # `worker serve handler.py`
    if serve:
        argv = argv[1:]
    ns, rest = _parser("required").parse_known_args(argv)
    if serve:
        ns.serve_api = True
    if _missing(ns.script):
        print(f"worker: error: {_missing(ns.script)}", file=sys.stderr)
        return 2
    return _start(_flags(ns), {}, ScriptTarget(os.path.abspath(ns.script), rest))


def _missing(script: str) -> str | None:
    """Why `script` is not a handler the worker can run (a file, or a folder with a
    __main__.py), or None."""
    path = os.path.abspath(script)
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, "__main__.py")):
        return None
    return f"handler file not found: {script}"


def run(target, argv: list, config: dict) -> int:
    """For start() outside a child with no script to re-execute."""
    ns, _ = _parser(None).parse_known_args(argv)
    return _start(_flags(ns), config, target)


def _start(flags: dict, config: dict, target) -> int:
    """Settings resolved and checked, the old names and unknown ones said, then the run."""
    try:
        resolved = cfg.resolve(flags=flags, config=config)
    except cfg.SettingsError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 2
    for line in resolved.deprecated:
        setting_sources.warn_once(line, lambda text: print(f"worker: warning: {text}",
                                                           file=sys.stderr))
    if not setting_names.names_ok(resolved.settings, os.environ):
        return 2
    refusal = run_modes.refusal(resolved.settings) or _unwatchable(resolved.settings, target)
    if refusal:
        print(f"worker: error: {refusal}", file=sys.stderr)
        return 2
    for line in run_modes.unused(resolved.settings):
        print(f"worker: warning: {line}", file=sys.stderr)
    settings_report.remember(resolved)
    settled, _ = run_modes.settle(resolved.settings)
    return run_mode(settled, target)


def _unwatchable(settings: cfg.Settings, target) -> str | None:
    """Why --reload or --watch has nothing to watch here (or None)."""
    if not (settings.reload or settings.watch):
        return None
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


def config_command(argv: list) -> int:
    """`worker config`: what a worker started here would run with; nothing is imported."""
    p = _parser("optional", prog="worker config")
    p.add_argument("--json", action="store_true", help="the same as JSON")
    p.epilog = "every setting, by topic (variable, flag):\n" + "\n".join(
        f"  [{topic}]\n" + "\n".join(
            f"    {', '.join(r['env']) or r['flag']}" + (f" ({r['flag']})" if r["env"] and
                                                         r["flag"] else "")
            for r in group) for topic, _, group in settings_doc.rows_by_topic())
    serve = bool(argv) and argv[0] == "serve"        # `worker config serve handler.py`
    ns, _ = p.parse_known_args(argv[serve:])
    flags = {**_flags(ns), **({"serve_api": True} if serve else {})}
    try:
        resolved = cfg.resolve(flags=flags)
        data = settings_report.report(resolved, os.environ)
    except cfg.SettingsError as exc:
        data = {"error": str(exc)}
    if ns.script and "error" not in data and not data["refused"]:
        data["refused"] = _refusal_of(ns.script, resolved.settings, data["mode"])
    try:
        if "error" in data and not ns.json:
            print(f"worker config: error: {data['error']}", file=sys.stderr)
        else:
            print(json.dumps(data, indent=2) if ns.json else settings_report.text(data))
            sys.stdout.flush()
    except BrokenPipeError:          # `worker config | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 2 if "error" in data or data.get("refused") else 0


def _refusal_of(script: str, settings: cfg.Settings, mode: str) -> str | None:
    """What a run of `script` would refuse that the settings alone do not say: the file,
    what --reload would watch, the one-shot test's input (read as the run reads it)."""
    refusal = _missing(script) or _unwatchable(run_modes.settle(settings)[0],
                                               ScriptTarget(os.path.abspath(script), []))
    if refusal or mode != "test":
        return refusal
    from ..jobs import JobError
    from ..sources.oneshot import load_job
    try:
        load_job(settings.test_input)
    except JobError as exc:             # the one-shot test stops here (exit 1)
        return str(exc)
    return None


def run_mode(settings: cfg.Settings, target) -> int:
    try:
        return _run_mode(settings, target)
    finally:
        reaper.end_adopted()     # what the last children left: nothing outlives the worker


def _run_mode(settings: cfg.Settings, target) -> int:
    """Run the settled mode (run_modes.py picked it and checked the settings)."""
    logs.configure(settings.log_level)
    reaper.become_subreaper()      # a child whose forkserver died is still ours to watch
    hardening.set_dumpable(False)  # our environ (the queue key) needs CAP_SYS_PTRACE to read
    hardening.bound_execs(settings.child_keep_caps)   # what we start never has them
    redaction.remember(settings.api_token, settings.queue_url, settings.webhook_proxy,
                       os.environ.get("RUNPOD_AI_API_KEY"))     # never in a line we write
    mode = settings.run_mode
    if mode in ("api", "realtime"):       # realtime: settle gave it 0.0.0.0 and its port
        from ..sources import local_api
        return local_api.serve(settings, target)
    if mode == "load_balancer":
        from ..sources import load_balancer
        return load_balancer.serve(settings, target)
    if mode == "redis":
        # RunPod's platform checks (its network check dials a public DNS server) are for
        # RunPod's machines: a self-hosted fleet runs the handler's own checks only.
        os.environ.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
        from ..sources.redis_queue import RedisQueueSource
        try:
            return RedisQueueSource(settings, target).run()
        except cfg.SettingsError as exc:
            print(f"worker: error: {exc}", file=sys.stderr)
            return 2
    if mode == "runpod":
        from ..sources.runpod import RunPodSource
        return RunPodSource(settings, target).run()
    from ..sources import oneshot, oneshot_watch
    return oneshot_watch.run(settings, target) if settings.watch else \
        oneshot.run(settings, target)
