"""Where each setting's value comes from, and the text that becomes a value (for any
dataclass whose fields carry env/flag/config metadata: config.Settings).

Precedence, highest first: the dict given to start(), command-line flags, environment
(WORKER_* and the RUNPOD_* names the official SDK reads; then the deprecated names below),
defaults. `resolve` keeps, for each setting, the source it took its value from, so that
`python -m worker config` and the table logged at the first child's start can say it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .setting_rules import SettingsError, checks_parts, checks_text, vram_parts, vram_text
from .setting_rules import short as _short

DEFAULT = "default"


@dataclass(frozen=True)
class Alias:
    """An old name that still works: it sets parts of `setting` (`convert` reads its value)
    and says once what replaced it. The old names of WORKER_CHECKS's parts are read
    together (_old_checks), as they combined."""
    old: str                        # the variable's name; its lower-case tail (no WORKER_)
    setting: str                    # is the old start() key where `config` is True
    env: str                        # the setting's variable
    convert: Callable[[str], Any]
    config: bool = False

    @property
    def key(self) -> str:
        return self.old.removeprefix("WORKER_").lower()



def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("a finite number >= 0")
    return value


def _mib(raw: Any) -> dict:
    value = _number(raw)                            # 0 was "never": no limit, as now
    if value > 16_777_216:
        raise ValueError("at most 16,777,216 MiB")
    return {"mb": value}


def _fraction(raw: Any) -> dict:
    value = _number(raw)
    if value > 1:
        raise ValueError("a fraction from 0 to 1")
    return {"fraction": round(value, 10)}


def _handler_checks(raw: Any) -> str:
    word = str(raw).strip().lower()
    if word not in ("auto", "on", "off"):
        raise ValueError("expected auto, on or off")
    return word


ALIASES = (
    Alias("WORKER_MAX_VRAM_MB", "max_vram", "WORKER_MAX_VRAM", _mib, config=True),
    Alias("WORKER_MAX_VRAM_FRACTION", "max_vram", "WORKER_MAX_VRAM", _fraction, config=True),
    Alias("WORKER_FITNESS_CHECKS", "checks", "WORKER_CHECKS", _handler_checks),
    Alias("WORKER_GPU_CHECK", "checks", "WORKER_CHECKS", lambda raw: _parse_bool(raw)),
    Alias("WORKER_REQUIRE_GPU", "checks", "WORKER_CHECKS", lambda raw: _parse_bool(raw)),
)
ALIAS_KEYS = {a.key: a for a in ALIASES if a.config}
ALIAS_NAMES = {a.old: a for a in ALIASES}
_warned: set = set()


def warn_once(text: str, say: Callable[[str], None]) -> None:
    """Each deprecated name is named once per process, however often it is read."""
    if text not in _warned:
        _warned.add(text)
        say(text)


def _merge(parts: dict, by: dict, found: dict, name: str, setting: str) -> None:
    """Parts an old name sets, added to those set so far (by: part -> the name that set
    it): two names that set one part differently are an error, never a silent winner."""
    for part, value in found.items():
        if part in parts and parts[part] != value:
            raise SettingsError(f"{name} and {by[part]} both set {setting} ({part}), "
                                f"differently; keep one")
        parts[part], by[part] = value, name


@dataclass
class Resolved:
    """Settings and, per setting, where its value came from."""
    settings: Any                   # config.Settings
    sources: dict = field(default_factory=dict)      # name -> "env WORKER_X", "flag --x"...
    deprecated: list = field(default_factory=list)   # one line per old name in use

    def source(self, name: str) -> str:
        return self.sources.get(name, DEFAULT)

    def with_config(self, config: Mapping[str, Any]) -> "Resolved":
        settings, keys, notes = apply_config(self.settings, config)
        sources = {**self.sources, **{k: f"start() key {src!r}" for k, src in keys.items()}}
        return Resolved(settings, sources, self.deprecated + notes)


def resolve(cls, env: Mapping[str, str] | None = None,
            flags: Mapping[str, Any] | None = None,
            config: Mapping[str, Any] | None = None) -> Resolved:
    """`cls` built from the sources in precedence order, each value's source kept."""
    import os
    env = os.environ if env is None else env
    fields = fields_of(cls)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields.values():
        for name in f.metadata["env"]:
            if env.get(name, "") != "":
                values[f.name] = parse(f, env[name], name)
                sources[f.name] = f"env {name}"
                break
    notes = []
    vram = [a for a in ALIASES if a.setting == "max_vram" and env.get(a.old, "") != ""]
    if vram:                  # the MiB limit and the share of memory: parts of one value
        parts = vram_parts(values.get("max_vram", ""))
        by = {part: "WORKER_MAX_VRAM" for part in parts}
        for alias in vram:
            _merge(parts, by, _convert(alias, env[alias.old], alias.old), alias.old,
                   "max_vram")
        values["max_vram"] = vram_text(parts)
        notes += [f"{a.old} is deprecated; use {a.env}={values['max_vram'] or 0}"
                  for a in vram]
        sources["max_vram"] = " + ".join(([sources["max_vram"]] if "max_vram" in sources
                                          else []) + [f"env {a.old} (deprecated)"
                                                      for a in vram])
    old = _old_checks(env, values.get("checks"), sources.get("checks", "").split()[-1:])
    if old is not None:
        values["checks"], names = old
        notes += [f"{name} is deprecated; use {ALIAS_NAMES[name].env}={values['checks']}"
                  for name in names]
        sources["checks"] = " + ".join(([sources["checks"]] if "checks" in sources else [])
                                       + [f"env {n} (deprecated)" for n in names])
    for key, raw in (flags or {}).items():
        if raw is not None:
            if key not in fields:
                raise SettingsError(f"unknown setting {key!r}")
            values[key] = parse(fields[key], raw, fields[key].metadata["flag"])
            sources[key] = f"flag {fields[key].metadata['flag']}"
    return Resolved(cls(**values), sources, notes).with_config(config or {})


def _old_checks(env: Mapping[str, str], text: str | None, name: list):
    """WORKER_FITNESS_CHECKS, WORKER_GPU_CHECK and WORKER_REQUIRE_GPU read as they were
    (the handler's checks; the GPU check; a GPU required, which ran the GPU check whatever
    WORKER_GPU_CHECK said), as a WORKER_CHECKS value, merged with WORKER_CHECKS's own
    words (two that disagree are an error): the value and the old names used, or None."""
    used = [a.old for a in ALIASES if a.setting == "checks" and env.get(a.old, "") != ""]
    if not used:
        return None
    parts = checks_parts(text, name[0]) if text else {}
    wanted = {}                       # part -> (the values the old names allow, a name)
    if "WORKER_FITNESS_CHECKS" in used:
        raw = env["WORKER_FITNESS_CHECKS"]
        wanted["handler"] = ({_convert(ALIAS_NAMES["WORKER_FITNESS_CHECKS"], raw,
                                        "WORKER_FITNESS_CHECKS")}, "WORKER_FITNESS_CHECKS")
    gpu = {"gpu", "no_gpu", "require_gpu"}
    for old, allows in (("WORKER_GPU_CHECK", ({"no_gpu"}, {"gpu", "require_gpu"})),
                        ("WORKER_REQUIRE_GPU", ({"gpu", "no_gpu"}, {"require_gpu"}))):
        if old in used:
            gpu &= allows[_convert(ALIAS_NAMES[old], env[old], old)]
            wanted["gpu"] = (gpu, old)
    if "WORKER_REQUIRE_GPU" in used and _parse_bool(env["WORKER_REQUIRE_GPU"]):
        wanted["gpu"] = ({"require_gpu"}, "WORKER_REQUIRE_GPU")     # it won, as it did
    for part, (allowed, old) in wanted.items():
        if part in parts and parts[part] not in allowed:
            raise SettingsError(f"{old} and {name[0]} both set checks ({part} checks), "
                                f"differently; keep {name[0]} alone")
        if part not in parts:
            parts[part] = next(v for v in ("gpu", "auto", "on", "off", "no_gpu",
                                           "require_gpu") if v in allowed)
    return checks_text(parts), used


def apply_config(settings, config: Mapping[str, Any]):
    """start() keys that name settings (or their old names), applied: the settings, the
    settings changed with the key that changed each, and a line per old key."""
    fields = fields_of(type(settings))
    changes, keys, notes = {}, {}, []
    for key, raw in config.items():
        f = fields.get(key)
        if f is not None and f.metadata["config"]:
            changes[key] = parse(f, raw, f"start() key {key!r}")
            keys[key] = key
    old = [key for key in config if key in ALIAS_KEYS]
    if old:
        # A part an old key names replaces that part of the worker's value (start() wins),
        # beside a "max_vram" key of the same dict it must agree with.
        own = "max_vram" in changes
        parts = vram_parts(changes["max_vram"] if own else settings.max_vram)
        by = {part: "start() key 'max_vram'" for part in parts} if own else {}
        for key in old:
            found = _convert(ALIAS_KEYS[key], config[key], f"start() key {key!r}")
            if not own:
                parts.update(found)
            _merge(parts, by, found, f"start() key {key!r}", "max_vram")
        changes["max_vram"] = vram_text(parts)
        keys["max_vram"] = " + ".join(old)
        notes += [f"start() key {key!r} is deprecated; use 'max_vram': "
                  f"{changes['max_vram'] or '0'!r}" for key in old]
    if "heartbeat_timeout" in changes and settings.heartbeat_interval == 0:
        # The child beats at the period it started with: that stays, and the new timeout
        # must be longer than it (setting_rules), or every child would be declared hung.
        changes["heartbeat_interval"] = settings.heartbeat_period
        keys["heartbeat_interval"] = keys["heartbeat_timeout"]
    return (dataclasses.replace(settings, **changes) if changes else settings), keys, notes


def config_keys(cls) -> set[str]:
    """start() keys that name settings, old names included."""
    return {name for name, f in fields_of(cls).items() if f.metadata["config"]} | \
        set(ALIAS_KEYS)


START_KEYS = ("handler", "concurrency_modifier", "rp_args", "warmup")   # not settings


def start_key_notes(cls, config: Mapping[str, Any]) -> list[str]:
    """start() keys that look meant for a setting but set none: a setting read before the
    module runs, or a near miss of one a start() dict may set (other keys are the
    handler's own, as in the SDK)."""
    fields, keys = fields_of(cls), config_keys(cls)
    out = []
    for key in config:
        if not isinstance(key, str) or key in keys or key in START_KEYS:
            continue
        if key in fields:
            f = fields[key]
            out.append(f"start() key {key!r} is ignored: {key} is read before the module "
                       f"runs (set {(f.metadata['env'] or (f.metadata['flag'],))[0]})")
            continue
        near = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.8)
        if near:
            out.append(f"start() key {key!r} is not a setting; did you mean {near[0]!r}?")
    return out


def fields_of(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def _convert(alias: Alias, raw: Any, source: str) -> Any:
    try:
        return alias.convert(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SettingsError(f"{source}={_short(raw)} is not valid: {exc}") from None



_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse(f: dataclasses.Field, raw: Any, source: str) -> Any:
    kind = f.type
    try:
        if kind == "bool":
            return _parse_bool(raw)
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("expected an integer")
            value = int(raw)
        elif kind == "float":
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            value = float(raw)
        elif kind == "tuple":
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(s.strip() for s in items if str(s).strip())
        else:
            return None if raw is None else str(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SettingsError(f"{source}={_short(raw)} is not valid for {f.name}: {exc}") \
            from None
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise SettingsError(f"{source}={_short(raw)} is not valid for {f.name}: must be a "
                            f"finite number >= 0")
    return value
