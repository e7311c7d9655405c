"""What is in force: each setting's value and where it came from, secrets redacted.

`python -m worker config` prints it without importing the handler. A running worker logs
the same table once its first child is ready, with what the start() dict set: at INFO the
settings that are not at their default, at DEBUG all of them.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from . import redaction, run_modes, setting_names, setting_sources, settings_doc
from .config import FIELDS, Settings, SettingsError

log = logging.getLogger("worker")
_started: list = []          # the Resolved this process started from (parent only)


def shown(name: str, value: Any) -> str:
    """A value as the table shows it: a secret's is never printed."""
    if value in (None, (), ""):
        return ""
    if FIELDS[name].metadata["secret"]:
        return redaction.url(value) if "://" in str(value) else redaction.MASK
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def rows(resolved: setting_sources.Resolved) -> list[dict]:
    """One row per setting, by topic: name, value, source, variable, topic."""
    s = resolved.settings
    mode, why = run_modes.pick(s)
    out = []
    for topic, _, group in settings_doc.rows_by_topic():
        for row in group:
            name = row["name"]
            value, source = getattr(s, name), resolved.source(name)
            if name == "mode":
                value = mode
                source = source if s.mode != "auto" or source != "default" else \
                    f"derived: {why}"
            elif name == "heartbeat_interval" and s.heartbeat_interval == 0:
                value, source = s.heartbeat_period, "derived from heartbeat_timeout"
            out.append({"name": name, "value": shown(name, value), "source": source,
                        "env": row["env"][0] if row["env"] else row["flag"],
                        "topic": topic, "default": source == setting_sources.DEFAULT
                        or source.startswith("derived")})
    return out


def report(resolved: setting_sources.Resolved, env: Mapping[str, str]) -> dict:
    """The whole picture, as `worker config --json` prints it."""
    mode, why = run_modes.pick(resolved.settings)
    return {"mode": mode, "mode_reason": why, "mode_means": run_modes.LABELS[mode],
            "refused": run_modes.refusal(resolved.settings),
            "settings": rows(resolved), "deprecated": list(resolved.deprecated),
            "not_settings": setting_names.unknown_names(env)}


def text(data: dict, everything: bool = True) -> str:
    """The table: every setting, or (everything=False) those not at their default."""
    lines = [f"mode: {data['mode']} — {data['mode_means']} ({data['mode_reason']})"]
    if data["refused"]:
        lines.append(f"refused: {data['refused']}")
    shown_rows = [r for r in data["settings"] if everything or not r["default"]
                  or r["name"] == "mode"]
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
    lines += [f"not a setting: {line}" for line in data["not_settings"]]
    return "\n".join(lines)


def remember(resolved: setting_sources.Resolved) -> None:
    """The settings this worker started from, for the table logged at the first ready."""
    _started[:] = [resolved]


def on_ready(settings: Settings, config: Mapping[str, Any]) -> Settings:
    """A child is ready with its start() dict: the settings with its keys applied; the
    first time in this process, the table of what is in force is logged."""
    try:
        new, _, notes = setting_sources.apply_config(settings, config)
    except SettingsError as exc:             # the child checked them; a safety net
        log.error("start() settings ignored: %s", exc)
        new, notes = settings, []
    for line in notes:
        setting_sources.warn_once(line, log.warning)
    if _started:
        data = report(_started.pop().with_config(config), {})
        data["refused"], data["deprecated"] = None, []       # each said once already
        log.info("settings in force:\n%s", text(data, everything=False))
        log.debug("every setting:\n%s", text(data))
    return new
