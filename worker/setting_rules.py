"""What each setting's value may be, and the checks that hold whatever set the values (a
variable, a flag, a start() dict): run by Settings.__post_init__, so no Settings object
exists that breaks them. Checks between a mode and the settings that ask for another live
in run_modes.py."""
from __future__ import annotations

import dataclasses
import functools
from urllib.parse import urlsplit

from .hardening import READERS
from .targets import SECRET_ENV


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the source."""


MODES = ("api", "realtime", "load_balancer", "runpod", "redis", "test")
PRODUCTION_MODES = ("runpod", "load_balancer", "redis")     # where the SDK runs checks
CHOICES = {"run_mode": ("auto",) + MODES,
           "webhook_guard": ("auto", "on", "off"), "reload_poll": ("auto", "on", "off"),
           "spare": ("auto", "on", "off"), "start_method": ("forkserver", "spawn")}
LOG_LEVELS = ("DEBUG", "TRACE", "NOTSET", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL")
# Every number has a ceiling: past one a wait overflows the OS's timers (select's
# milliseconds end near 24 days) or a port wraps round; "no limit" is 0 where there is one.
_S, _MIB, _PORT = (1_000_000, " s (0 = no limit)"), (16_777_216, " MiB"), (65_535, "")
MAXIMA = {
    "job_timeout": _S, "setup_timeout": _S, "launch_timeout": _S, "spare_max_age": _S,
    "heartbeat_interval": _S, "heartbeat_timeout": _S, "stop_grace": (3600, " s"),
    "restart_window": _S, "shutdown_grace": _S, "webhook_timeout": (3600, " s"),
    "result_ttl": _S, "queue_lease_s": (86_400, " s"),
    "max_rss_mb": _MIB, "max_result_mb": _MIB, "max_run_mb": _MIB, "max_runsync_mb": _MIB,
    "api_queue_mb": _MIB, "api_port": _PORT, "metrics_port": _PORT, "realtime_port": _PORT,
    "port": _PORT, "port_health": _PORT, "child_oom_score_adj": (1000, ""),
    "max_jobs_per_child": (10**9, ""), "children": (1024, ""), "gpus_per_child": (1024, ""),
    "restart_limit": (10**6, ""), "job_max_crashes": (1000, ""), "api_queue_jobs": (10**7, ""),
    "queue_max_deliveries": (1000, ""),
}
ADDRESS_SETTINGS = ("api_host", "metrics_host")     # what the worker listens on
LOOPBACK = "127.0.0.1"


def check(s) -> dict:
    """Raise SettingsError for a value that cannot be used; answer the values normalised
    (name -> value) for __post_init__ to set."""
    names = {f.name: (f.metadata["env"] or (f.name,))[0] for f in dataclasses.fields(s)}
    out = {}
    # An empty address means loopback, from any source: never "every interface", which
    # is what an empty host means to a socket.
    for name in ADDRESS_SETTINGS:
        if not getattr(s, name).strip():
            out[name] = LOOPBACK
    level = str(s.log_level).strip().upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"WORKER_LOG_LEVEL={s.log_level!r}: log_level must be DEBUG, "
                            f"INFO, WARN, ERROR or CRITICAL")
    out["log_level"] = level
    out["checks"] = checks_text(checks_parts(s.checks, names["checks"]))
    for name, allowed in CHOICES.items():
        value = getattr(s, name)
        if value not in allowed:
            raise SettingsError(f"{names[name]}={value!r}: {name} must be "
                                f"{', '.join(allowed[:-1])} or {allowed[-1]}")
    for name, (ceiling, unit) in MAXIMA.items():
        value = getattr(s, name)
        if value is not None and value > ceiling:
            raise SettingsError(f"{names[name]}={short(value)}: {name} must be at most "
                                f"{ceiling:,}{unit}")
    if s.queue_lease_s < 1 or s.queue_max_deliveries < 1:
        raise SettingsError("WORKER_QUEUE_LEASE_S must be 1 s or more and "
                            "WORKER_QUEUE_MAX_DELIVERIES 1 or more")
    if 0 < s.heartbeat_interval < 0.05:
        raise SettingsError("WORKER_HEARTBEAT_INTERVAL must be 0 (derived) or 0.05 s or more")
    if 0 < s.heartbeat_timeout <= s.heartbeat_period:
        raise SettingsError(f"heartbeat_timeout ({s.heartbeat_timeout:g} s) must be longer "
                            f"than the heartbeat interval ({s.heartbeat_period:g} s), or "
                            f"every child is declared hung (WORKER_HEARTBEAT_TIMEOUT sets "
                            f"both)")
    caps = tuple(c.strip().upper().removeprefix("CAP_") for c in s.child_keep_caps)
    unknown = [c for c in caps if c not in READERS]
    if unknown:
        raise SettingsError(f"WORKER_CHILD_KEEP_CAPS names {', '.join(unknown)}: the "
                            f"capabilities a child can keep are {', '.join(READERS)}")
    out["child_keep_caps"] = caps
    passing = [n for n in s.child_env_pass if n not in SECRET_ENV]
    if passing:
        raise SettingsError(f"WORKER_CHILD_ENV_PASS names {', '.join(passing)}: it passes "
                            f"the secrets a child never sees otherwise, "
                            f"{', '.join(SECRET_ENV)} (every other variable reaches it)")
    vram_limit(s.max_vram)
    proxy_url(s.webhook_proxy)
    return out


def short(raw) -> str:
    """A value as an error quotes it: a 400-digit number is not worth 400 digits."""
    text = repr(raw)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def vram_parts(text: str) -> dict:
    """WORKER_MAX_VRAM's parts, each only where the value names it: "mb" (MiB of growth)
    and "fraction" (of the devices' memory, written as a percentage); both: the lower."""
    parts: dict = {}
    for item in (i.strip() for i in str(text).split(",") if str(text).strip()):
        part = "fraction" if item.endswith("%") else "mb"
        try:
            value = float(item[:-1] if part == "fraction" else item or 0)
        except ValueError:
            value = -1.0
        ceiling = 100.0 if part == "fraction" else _MIB[0]
        if part in parts or not 0 <= value <= ceiling:
            raise SettingsError(f"WORKER_MAX_VRAM={short(text)}: give MiB (e.g. 4096), a "
                                f"percentage of the devices' memory (e.g. 90%), or both "
                                f"(4096,90%: the lower); 0 = no limit")
        parts[part] = round(value / 100, 10) if part == "fraction" else value   # 0: none
    return parts


def vram_limit(text: str) -> tuple[float, float]:
    """WORKER_MAX_VRAM as (MiB, fraction); 0 where it names none."""
    return _vram_limit(str(text))


@functools.lru_cache(maxsize=8)     # the parent reads it after every job (recycling.py)
def _vram_limit(text: str) -> tuple[float, float]:
    parts = vram_parts(text)
    return parts.get("mb", 0.0), parts.get("fraction", 0.0)


def vram_text(parts: dict) -> str:
    """The shortest value that names these parts ("" = no limit)."""
    out = []
    if parts.get("mb"):
        mb = parts["mb"]
        out.append(str(int(mb)) if float(mb).is_integer() else repr(float(mb)))
    if parts.get("fraction"):
        out.append(f"{parts['fraction'] * 100:.10g}%")
    return ",".join(out)


# WORKER_CHECKS: which checks run before the first child takes jobs, in two parts — the
# handler's fitness checks (auto: in the production modes, as the SDK) and the built-in
# GPU check — as comma-separated words; `off` alone is both off.
CHECK_WORDS = {"auto": ("handler", "auto"), "on": ("handler", "on"),
               "off": ("handler", "off"), "gpu": ("gpu", "gpu"),
               "no_gpu": ("gpu", "no_gpu"), "require_gpu": ("gpu", "require_gpu")}


def checks_parts(text: str, name: str = "WORKER_CHECKS") -> dict:
    """The parts a WORKER_CHECKS value names: {"handler": ..., "gpu": ...}, each only
    where the value names it."""
    words = [w.strip().lower() for w in str(text).split(",") if w.strip()]
    if set(words) == {"off"}:
        return {"handler": "off", "gpu": "no_gpu"}
    parts: dict = {}
    for word in words:
        if word not in CHECK_WORDS:
            raise SettingsError(f"{name}={text!r}: checks must be auto, on, off or "
                                f"require_gpu (or words of both parts: e.g. on,no_gpu)")
        part, value = CHECK_WORDS[word]
        if parts.get(part, value) != value:
            raise SettingsError(f"{name}={text!r} names the {part} checks twice")
        parts[part] = value
    return parts


def checks_text(parts: dict) -> str:
    """The shortest value that names these parts."""
    handler, gpu = parts.get("handler", "auto"), parts.get("gpu", "gpu")
    if (handler, gpu) == ("off", "no_gpu"):
        return "off"
    if gpu == "gpu":
        return "off,gpu" if handler == "off" else handler     # "off" alone is both off
    return gpu if handler == "auto" else f"{handler},{gpu}"


def proxy_url(text: str):
    """WORKER_WEBHOOK_PROXY split, or None when empty: http://[user:password@]host[:port]."""
    if not text:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:               # "Invalid IPv6 URL", a port that is not a number
        parts, port = urlsplit(""), -1
    if parts.scheme != "http" or not parts.hostname or port == -1 or \
            parts.path not in ("", "/") or parts.query:
        raise SettingsError("WORKER_WEBHOOK_PROXY must be http://host:port, with "
                            "user:password@ before the host if the proxy asks for them "
                            "(an https:// or socks proxy is not supported)")
    return parts
