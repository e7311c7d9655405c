"""Settings for people: grouped by topic, with an example each; --help, `worker config`
and docs/configuration.md (`python -m worker.settings_doc > docs/configuration.md`, and a
test that fails when the file is stale) all read these groups."""
from __future__ import annotations

import sys

from .config import describe

# (topic, what it is for, settings in the order a reader needs them)
TOPICS = (
    ("Where jobs come from", "The run mode and what picks it.",
     ("run_mode", "serve_api", "realtime_port", "load_balancer", "port", "port_health",
      "runpod_get_job", "endpoint_id", "refresh_stops_pod", "test_input", "test_output")),
    ("Jobs and limits", "What one job may take, and when its child is replaced.",
     ("job_timeout", "max_result_mb", "return_aggregate_stream", "refresh_worker",
      "refresh_on_oom", "max_jobs_per_child", "max_rss_mb", "max_vram", "job_max_crashes",
      "rp_debugger")),
    ("Children and GPUs", "How many children, which GPUs, and how fast a new one is ready.",
     ("children", "gpus_per_child", "checks", "setup_timeout", "spare", "warm_refresh",
      "preload")),
    ("Health and stopping", "When the worker gives up on a child, and how it stops.",
     ("heartbeat_timeout", "restart_limit", "restart_window", "shutdown_grace", "stop_grace",
      "health_file", "metrics_port", "metrics_host")),
    ("Local API", "`worker serve`, the realtime port and load balancing.",
     ("api_host", "api_port", "api_token", "max_run_mb", "max_runsync_mb", "api_queue_jobs",
      "api_queue_mb", "result_ttl", "webhook_guard", "webhook_allow", "webhook_proxy",
      "webhook_timeout")),
    ("Own fleet on Redis Streams", "An endpoint on Redis Streams: [docs/fleet.md](fleet.md).",
     ("queue_url", "queue_password_file", "queue_endpoint", "queue_lease_s",
      "queue_max_deliveries")),
    ("The developer's loop", "New code on every save: [the developer's loop]"
                             "(running.md#the-developers-loop---reload-and---watch).",
     ("reload", "reload_include", "reload_exclude", "watch")),
    ("Secrets and identity", "What a handler can see, and how the worker names itself.",
     ("child_user", "child_env_pass", "worker_id", "hostname", "log_level",
      "strict_settings")),
    ("Advanced", "Internals; the defaults suit nearly every worker.",
     ("heartbeat_interval", "launch_timeout", "child_oom_score_adj", "start_method",
      "spare_max_age", "child_keep_caps", "reload_poll")),
)

EXAMPLES = {
    "run_mode": "runpod", "serve_api": "true", "realtime_port": "8080", "load_balancer": "true",
    "port": "8080", "port_health": "8081",
    "runpod_get_job": "https://api.runpod.ai/v2/ep-1/job-take/$RUNPOD_POD_ID",
    "endpoint_id": "ep-1", "refresh_stops_pod": "true",
    "test_input": '\'{"input": {"prompt": "hi"}}\'', "test_output": '\'{"text": "hi"}\'',
    "job_timeout": "300", "max_result_mb": "50", "return_aggregate_stream": "true",
    "refresh_worker": "true", "refresh_on_oom": "false", "max_jobs_per_child": "100",
    "max_rss_mb": "12000", "max_vram": "90%", "job_max_crashes": "2", "rp_debugger": "true",
    "children": "2", "gpus_per_child": "1", "checks": "require_gpu", "setup_timeout": "1200",
    "spare": "on", "warm_refresh": "true", "preload": "torch,transformers",
    "heartbeat_timeout": "120", "restart_limit": "3", "restart_window": "120",
    "shutdown_grace": "5", "stop_grace": "1.5", "health_file": "/tmp/worker-health.json",
    "metrics_port": "9100", "metrics_host": "0.0.0.0", "api_host": "0.0.0.0",
    "api_port": "8080", "api_token": "s3cret", "max_run_mb": "50", "max_runsync_mb": "50",
    "api_queue_jobs": "200", "api_queue_mb": "512", "result_ttl": "600",
    "webhook_guard": "on", "webhook_allow": "10.0.0.0/8,hooks.internal",
    "webhook_proxy": "http://proxy.internal:3128", "webhook_timeout": "5",
    "queue_url": "rediss://worker:pw@redis.internal:6380/0",
    "queue_password_file": "/run/secrets/redis", "queue_endpoint": "sdxl",
    "queue_lease_s": "60", "queue_max_deliveries": "5", "reload": "true",
    "reload_include": "*.yaml,configs/", "reload_exclude": "outputs/*", "watch": "",
    "child_user": "1000", "child_env_pass": "RUNPOD_AI_API_KEY", "worker_id": "pod-1",
    "hostname": "gpu-7", "log_level": "DEBUG", "strict_settings": "true",
    "heartbeat_interval": "0.5", "launch_timeout": "30", "child_oom_score_adj": "0",
    "start_method": "spawn", "spare_max_age": "3600", "child_keep_caps": "SYS_ADMIN",
    "reload_poll": "on",
}


def rows_by_topic() -> list[tuple[str, str, list[dict]]]:
    rows = {row["name"]: row for row in describe()}
    return [(title, blurb, [rows[name] for name in names]) for title, blurb, names in TOPICS]


def example(row: dict) -> str:
    value = EXAMPLES[row["name"]]
    if row["env"]:
        return f"{row['env'][0]}={value}"
    return f"{row['flag']} {value}".strip()


def default_text(row: dict) -> str:
    value = row["default"]
    if value in ((), "", None):
        return "(empty)" if value != () else "(none)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown() -> str:
    from . import setting_sources
    lines = ["# Configuration", "",
             "<!-- Generated by `python -m worker.settings_doc > docs/configuration.md` "
             "from worker/config.py; tests/test_settings_doc.py fails when it is stale. -->",
             "", "Every setting, by topic. A value comes from, highest first: the dict given "
             "to `start()` (the settings marked *start()*), a flag, the environment, the "
             "default. `python -m worker config` prints each setting's value in force and "
             "where it came from, without importing your handler; a `WORKER_*` variable "
             "that no setting reads is named at start-up with the nearest setting "
             "(`WORKER_STRICT_SETTINGS=true` makes that an error).", ""]
    for title, blurb, _ in rows_by_topic():
        lines.append(f"- [{title}](#{_anchor(title)})")
    lines.append("- [Old names](#old-names)")
    for title, blurb, rows in rows_by_topic():
        lines += ["", f"## {title}", "", blurb, ""]
        for row in rows:
            names = [f"`{n}`" for n in row["env"]] + ([f"`{row['flag']}`"] if row["flag"]
                                                    else [])
            where = " *start()*" if row["start_config"] else ""
            lines += [f"### {row['name']}{where}", "",
                      f"{' · '.join(names)} — default `{default_text(row)}`", "",
                      row["help"], "", f"Example: `{example(row)}`", ""]
        while lines[-1] == "":
            lines.pop()
    lines += ["", "## Old names", "",
              "Each still works, and the worker says once, at start-up, what replaced it.",
              "", "| Old name | Now |", "|---|---|"]
    for alias in setting_sources.ALIASES:
        lines.append(f"| `{alias.old}`" + (f", start() key `{alias.key}`" if alias.config
                                           else "") +
                     f" | `{alias.env}` |")
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c == "-")


if __name__ == "__main__":
    sys.stdout.write(markdown())
