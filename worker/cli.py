"""`python -m worker handler.py [flags]` and the `worker` console script."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import config as cfg
from .child import ScriptTarget
from .version import __version__


def _parser(with_script: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worker", allow_abbrev=False,
        description="Run a RunPod-style handler in a supervised child process. Flags not "
                    "listed here are left in the handler's sys.argv.")
    if with_script:
        p.add_argument("script", help="the handler file (it calls start({'handler': ...}))")
    for row in cfg.describe():
        if row["flag"]:
            p.add_argument(row["flag"], dest=row["name"], default=None, metavar="VALUE",
                           help=f"{row['help']} (env: {', '.join(row['env']) or '-'})")
    p.add_argument("--rp_debugger", action="store_true",
                   help="accepted for compatibility with runpod-python; has no effect")
    p.add_argument("--version", action="version", version=f"gpu-worker {__version__}")
    return p


def _flags(ns: argparse.Namespace) -> dict:
    names = {row["name"] for row in cfg.describe()}
    return {k: v for k, v in vars(ns).items() if k in names and v is not None}


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns, rest = _parser(with_script=True).parse_known_args(argv)
    script = os.path.abspath(ns.script)
    if not os.path.isfile(script):
        print(f"worker: error: handler file not found: {ns.script}", file=sys.stderr)
        return 2
    try:
        settings = cfg.Settings.load(flags=_flags(ns))
    except cfg.SettingsError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
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
    return run_mode(settings, target)


def run_mode(settings: cfg.Settings, target) -> int:
    configure_logging(settings.log_level)
    if os.environ.get("RUNPOD_WEBHOOK_GET_JOB") and settings.test_input is None:
        print("worker: error: RUNPOD_WEBHOOK_GET_JOB is set, but this version of gpu-worker "
              "only runs the one-shot local test (--test_input or ./test_input.json)",
              file=sys.stderr)
        return 2
    from .sources import oneshot
    return oneshot.run(settings, target)


def configure_logging(level: str) -> None:
    name = {"WARN": "WARNING", "TRACE": "DEBUG", "NOTSET": "DEBUG"}.get(level.upper(),
                                                                         level.upper())
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, name, logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s | %(message)s")
