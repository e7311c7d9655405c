"""What is in force: each setting's value and where it came from, secrets redacted.

`python -m worker config` prints it without importing the handler. A running worker logs
the same table once its first child is ready, with what the start() dict set: at INFO the
settings that are not at their default, at DEBUG all of them.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

from . import logs, redaction, run_modes, setting_names, setting_sources, settings_doc
from .config import FIELDS, Settings, SettingsError

log = logging.getLogger("worker")
URL_SETTINGS = ("queue_url", "webhook_proxy")     # secrets whose host may be shown
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")   # ends where JSON's strings do
_started: list = []          # the Resolved this process started from (parent only)


def shown(name: str, value: Any) -> str:
    """A value as the table shows it: a secret's is never printed, nor any URL's
    credentials wherever a URL appears (a test input, an allow list)."""
    if value in (None, (), ""):
        return ""
    if isinstance(value, tuple):                 # each item alone: a password may hold ','
        return ",".join(shown(name, item) for item in value)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if FIELDS[name].metadata["secret"]:
        return redaction.url(text) if name in URL_SETTINGS and "://" in text \
            else redaction.MASK
    return URL.sub(lambda m: redaction.url(m.group(0)), text)


def rows(resolved: setting_sources.Resolved) -> list[dict]:
    """One row per setting, by topic: name, value, source, variable, topic."""
    settled, derived = run_modes.settle(resolved.settings)
    out = []
    for topic, _, group in settings_doc.rows_by_topic():
        for row in group:
            name = row["name"]
            value, source = getattr(settled, name), resolved.source(name)
            if name in derived:
                source = f"derived: {derived[name]}" if source == setting_sources.DEFAULT \
                    else f"{source}, overridden: {derived[name]}"
            elif name == "heartbeat_interval" and settled.heartbeat_interval == 0:
                value, source = settled.heartbeat_period, "derived from heartbeat_timeout"
            out.append({"name": name, "value": shown(name, value), "source": source,
                        "env": row["env"][0] if row["env"] else row["flag"],
                        "topic": topic, "default": source == setting_sources.DEFAULT
                        or source.startswith("derived")})
    return out


def report(resolved: setting_sources.Resolved, env: Mapping[str, str],
           checks: bool = True) -> dict:
    """The whole picture, as `worker config --json` prints it; checks=False: the table
    alone (a running worker said the rest at its start, and reads no file again)."""
    s = resolved.settings
    mode, why = run_modes.pick(s)
    data = {"mode": mode, "mode_reason": why, "mode_means": run_modes.LABELS[mode],
            "refused": None, "settings": rows(resolved), "deprecated": [], "unused": [],
            "not_settings": []}
    if checks:
        unknown = setting_names.unknown_names(env)
        strict = f"{unknown[0]} (WORKER_STRICT_SETTINGS)" if unknown and \
            s.strict_settings else None
        data.update(refused=run_modes.refusal(s) or strict, not_settings=unknown,
                    deprecated=list(resolved.deprecated), unused=run_modes.unused(s))
    return data


def text(data: dict, everything: bool = True) -> str:
    """The table: every setting, or (everything=False) those not at their default."""
    lines = [f"mode: {data['mode']} — {data['mode_means']} ({data['mode_reason']})"]
    if data["refused"]:
        lines.append(f"refused: {data['refused']}")
    shown_rows = [r for r in data["settings"] if everything or not r["default"]
                  or r["name"] == "run_mode"]
    width = max(len(r["name"]) for r in shown_rows)
    value_width = min(40, max(len(r["value"]) for r in shown_rows))
    topic = None
    for r in shown_rows:
        if everything and r["topic"] != topic:
            topic = r["topic"]
            lines.append(f"[{topic}]")
        lines.append(f"  {r['name']:<{width}}  {r['value']:<{value_width}}  {r['source']}")
    left = len(data["settings"]) - len(shown_rows)
    if left:
        lines.append(f"  ({left} more at their defaults: python -m worker config)")
    lines += [f"deprecated: {line}" for line in data["deprecated"]]
    lines += [f"warning: {line}" for line in data["unused"]]
    lines += [f"not a setting: {line}" for line in data["not_settings"]]
    return "\n".join(lines)


def remember(resolved: setting_sources.Resolved) -> None:
    """The settings this worker started from, for the table logged at the first ready."""
    _started[:] = [resolved]


def on_ready(settings: Settings, config: Mapping[str, Any],
             notes_from_child=None) -> Settings:
    """A child is ready with its start() keys (and notes on keys that set nothing): the
    settings with the keys applied; each note said once, and the first time in this
    process the table of what is in force is logged."""
    try:
        new, _, notes = setting_sources.apply_config(settings, config)
    except SettingsError as exc:             # the child checked them; a safety net
        log.error("start() settings ignored: %s", exc)
        new, notes = settings, []
    for line in notes + list(notes_from_child or ()):
        setting_sources.warn_once(line, log.warning)
    if new.log_level != settings.log_level:         # the start() dict's level, in force
        logging.getLogger().setLevel(logs.level_number(new.log_level))
    if _started:
        try:
            data = report(_started.pop().with_config(config), {}, checks=False)
            log.info("settings in force:\n%s", text(data, everything=False))
            log.debug("every setting:\n%s", text(data))
        except Exception as exc:        # noqa: BLE001 - a report never stops the core
            log.error("the settings table could not be made: %s: %s",
                      type(exc).__name__, exc)
    return new
