"""One Settings object for the whole worker: each field carries its environment names,
flag, help text and whether a start() dict may set it, so parsing (setting_sources.py),
`python -m worker config` and docs/configuration.md all come from here. What a value may
be is setting_rules.py (run by __post_init__, whatever set it); the mode and the checks
between it and the settings, run_modes.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import setting_rules, setting_sources
from .setting_sources import SettingsError  # noqa: F401 - callers name it here


def _setting(default, env=(), flag=None, help="", config=True, secret=False):
    return field(default=default, repr=not secret,       # a secret never in a repr
                 metadata={"env": tuple(env), "flag": flag, "help": help, "config": config,
                           "secret": secret})


@dataclass(frozen=True)
class Settings:
    log_level: str = _setting("INFO", ("WORKER_LOG_LEVEL", "RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL"),
                              "--rp_log_level", "Log level of the parent: DEBUG, INFO, WARN, ERROR.")
    job_timeout: float = _setting(0.0, ("WORKER_JOB_TIMEOUT",), "--job_timeout",
                                  "Seconds a job may run before it ends TIMED_OUT and the child is "
                                  "replaced; 0 = no limit. A job's policy.executionTimeout (ms) wins.")
    setup_timeout: float = _setting(600.0, ("WORKER_SETUP_TIMEOUT",), "--setup_timeout",
                                    "Seconds the child may take to import the handler module and "
                                    "reach start() (model loading).", config=False)
    launch_timeout: float = _setting(10.0, ("WORKER_LAUNCH_TIMEOUT",), None,
                                     "Seconds the launcher may take to start a child from a "
                                     "template that has started one before (a fork); past it "
                                     "the launcher is declared dead and replaced, and the "
                                     "start tried again. The first start through a new "
                                     "template has setup_timeout.", config=False)
    child_oom_score_adj: int = _setting(500, ("WORKER_CHILD_OOM_SCORE_ADJ",), None,
                                        "How much each child raises its oom_score_adj above "
                                        "the parent's (up to 1000), so that under memory "
                                        "pressure the kernel kills a child, whose jobs the "
                                        "worker fails and replaces, before the forkserver or "
                                        "the parent; 0 = as the parent.", config=False)
    spare: str = _setting("auto", ("WORKER_SPARE",), None,
                          "Keep a spare child per slot, set up (and warmed) while the active "
                          "one serves, so a refresh, crash, timeout or recycle swaps children "
                          "instead of waiting for a new one's set-up: on (whenever it fits "
                          "beside the active child), off, or auto (on where the first "
                          "child's set-up took 1 s or more and the slot has a GPU or warm "
                          "refresh is on).", config=False)
    spare_max_age: float = _setting(0.0, ("WORKER_SPARE_MAX_AGE",), None,
                                    "Seconds a ready spare may wait before it is replaced by "
                                    "a newer one (state fetched at import ages); 0 = no "
                                    "limit.", config=False)
    heartbeat_interval: float = _setting(0.0, ("WORKER_HEARTBEAT_INTERVAL",), None,
                                         "Seconds between the child's liveness heartbeats; "
                                         "0 = derived: a tenth of heartbeat_timeout, at "
                                         "most 1 s.", config=False)
    heartbeat_timeout: float = _setting(60.0, ("WORKER_HEARTBEAT_TIMEOUT",), None,
                                        "Seconds without a heartbeat before a child is declared "
                                        "hung and replaced; 0 = never.")
    stop_grace: float = _setting(5.0, ("WORKER_STOP_GRACE",), None,
                                 "Seconds each step of a stop may take: cooperative, then SIGTERM "
                                 "to the child's process group, then SIGKILL.")
    max_jobs_per_child: int = _setting(0, ("WORKER_MAX_JOBS_PER_CHILD",), None,
                                       "Replace the child after this many jobs; 0 = never.")
    max_rss_mb: float = _setting(0.0, ("WORKER_MAX_RSS_MB",), None,
                                 "Replace the child, between jobs, when its process tree's "
                                 "resident memory exceeds this many MiB; 0 = never.")
    max_vram: str = _setting("", ("WORKER_MAX_VRAM",), None,
                             "Replace the child, between jobs, when GPU memory in use has "
                             "grown past this over the baseline taken before it started (or "
                             "its own torch reservation has): MiB (e.g. 4096), a share of "
                             "the devices' memory (e.g. 90%), or both (4096,90%: the lower); "
                             "empty or 0 = never.")
    refresh_on_oom: bool = _setting(True, ("WORKER_REFRESH_ON_OOM",), None,
                                    "A job that fails with CUDA out of memory fails clearly and "
                                    "the child is replaced before the next job.")
    refresh_worker: bool = _setting(False, ("WORKER_REFRESH_WORKER",), None,
                                    "Replace the child after every job (start() key "
                                    "refresh_worker).")
    strict_settings: bool = _setting(False, ("WORKER_STRICT_SETTINGS",), None,
                                     "true: a WORKER_* variable that no setting reads (a "
                                     "misspelt name) stops the worker at start-up, exit 2; "
                                     "else it is a warning with the nearest setting's name.",
                                     config=False)
    return_aggregate_stream: bool = _setting(False, ("WORKER_RETURN_AGGREGATE_STREAM",), None,
                                             "Generator handlers: the final output is the list of "
                                             "chunks (start() key return_aggregate_stream).")
    preload: tuple = _setting((), ("WORKER_PRELOAD",), "--preload",
                              "Comma-separated modules the forkserver imports once, so a fresh "
                              "child starts with them loaded (e.g. torch).", config=False)
    warm_refresh: bool = _setting(False, ("WORKER_WARM_REFRESH",), "--warm_refresh",
                                  "The forkserver imports the handler module once (its start() "
                                  "recorded, not run); every fresh child is a fork of that "
                                  "import, so a refresh skips the module body. Refused, with a "
                                  "log line, when the import initialises CUDA or starts threads "
                                  "or processes (children then start cold).", config=False)
    reload: bool = _setting(False, ("WORKER_RELOAD",), "--reload",
                            "Local API and load-balancing modes: watch the handler's code "
                            "(its file and every module it imported from outside "
                            "site-packages) and replace the child with one running the new "
                            "code on every save (docs/running.md: the developer's loop); "
                            "refused on a queue.",
                            config=False)
    reload_include: tuple = _setting((), ("WORKER_RELOAD_INCLUDE",), None,
                                     "--reload and --watch: more paths (files or folders) and "
                                     "glob patterns (e.g. *.yaml) whose changes reload, "
                                     "comma-separated.", config=False)
    reload_exclude: tuple = _setting((), ("WORKER_RELOAD_EXCLUDE",), None,
                                     "--reload and --watch: glob patterns whose changes never "
                                     "reload (e.g. outputs/*), comma-separated.",
                                     config=False)
    reload_poll: str = _setting("auto", ("WORKER_RELOAD_POLL",), None,
                                "--reload and --watch: poll for changes instead of file "
                                "system events: auto (on network and container-shared file "
                                "systems), on, off.", config=False)
    watch: bool = _setting(False, (), "--watch",
                           "One-shot test: run the test input again on every save of the "
                           "handler's code (and of test_input.json), stopping a run a save "
                           "lands in.", config=False)
    start_method: str = _setting("forkserver", ("WORKER_START_METHOD",), None,
                                 "forkserver (fast respawn) or spawn.", config=False)
    children: int = _setting(0, ("WORKER_CHILDREN",), "--children",
                             "How many children run jobs side by side, each with its own "
                             "handler module, model and GPU slice; 0 = one per slice of "
                             "gpus_per_child GPUs, or 1 when no GPU is visible.",
                             config=False)
    gpus_per_child: int = _setting(None, ("WORKER_GPUS_PER_CHILD",), "--gpus_per_child",
                                   "GPUs each child sees (its CUDA_VISIBLE_DEVICES); 0 = one "
                                   "child with every GPU (a model that spans GPUs). Default: "
                                   "the GPUs divided evenly among WORKER_CHILDREN, else 1.",
                                   config=False)
    restart_limit: int = _setting(5, ("WORKER_RESTART_LIMIT",), None,
                                  "Children in a row that die (crash or hang) before finishing "
                                  "a job, within restart_window, that stop respawning (the "
                                  "worker is then unhealthy). A finished job resets the count.")
    restart_window: float = _setting(60.0, ("WORKER_RESTART_WINDOW",), None,
                                     "Seconds over which restart_limit counts deaths.")
    job_max_crashes: int = _setting(1, ("WORKER_JOB_MAX_CRASHES",), None,
                                    "Child deaths a job may cause before it fails for good; with "
                                    "more than 1 the job is retried on a fresh child.")
    shutdown_grace: float = _setting(30.0, ("WORKER_SHUTDOWN_GRACE",), None,
                                     "On SIGTERM/SIGINT: seconds running jobs may take to finish "
                                     "before the child is stopped.", config=False)
    max_result_mb: float = _setting(20.0, ("WORKER_MAX_RESULT_MB",), None,
                                    "A result larger than this (MiB of JSON) is reported FAILED "
                                    "with a clear error instead of being posted; 0 = no limit. "
                                    "Also the stream chunks a job may hold unread (the oldest go "
                                    "past it; 256 MiB where this is 0).")
    refresh_stops_pod: bool = _setting(False, ("WORKER_REFRESH_STOPS_POD",), None,
                                       "RunPod queue: also send stopPod: true with a result that "
                                       "asks for refresh_worker, as runpod-python does (the "
                                       "platform then replaces the pod); by default only the "
                                       "child is replaced.")
    run_mode: str = _setting("auto", ("WORKER_MODE",), None,
                         "Where jobs come from: api (the local HTTP API), realtime, "
                         "load_balancer, runpod (the RunPod queue), redis (an endpoint on "
                         "Redis Streams), test (the one-shot test); auto picks it as the SDK "
                         "does, from the settings below (`python -m worker config` says which "
                         "and why).", config=False)
    serve_api: bool = _setting(False, ("WORKER_SERVE_API",), "--rp_serve_api",
                               "Serve the local HTTP API instead of the one-shot test.",
                               config=False)
    api_host: str = _setting("127.0.0.1", ("WORKER_API_HOST",), "--rp_api_host",
                             "Local API address (empty = 127.0.0.1; 0.0.0.0 for "
                             "every interface).", config=False)
    api_port: int = _setting(8000, ("WORKER_API_PORT",), "--rp_api_port",
                             "Local API port.", config=False)
    api_token: str = _setting("", ("WORKER_API_TOKEN",), None,
                              "Local API: when set, every route but /health and /ping needs "
                              "`Authorization: Bearer <token>`.", config=False, secret=True)
    webhook_guard: str = _setting("auto", ("WORKER_WEBHOOK_GUARD",), None,
                                  "Local API webhooks go to public addresses only (the "
                                  "download guard's rule): on, off, or auto (on when a socket "
                                  "the API bound takes connections from beyond loopback: "
                                  "load-balancing and realtime modes, or WORKER_API_HOST="
                                  "0.0.0.0; 127.0.0.2 or localhost keep it off: the "
                                  "addresses actually bound are read).",
                                  config=False)
    webhook_allow: tuple = _setting((), ("WORKER_WEBHOOK_ALLOW",), None,
                                    "Webhook receivers allowed although private: host names "
                                    "or CIDRs, comma-separated (in-cluster services).",
                                    config=False)
    webhook_proxy: str = _setting("", ("WORKER_WEBHOOK_PROXY",), None,
                                  "An HTTP proxy for webhooks (http://host:port); the "
                                  "environment's proxy variables are never used.",
                                  config=False, secret=True)
    webhook_timeout: float = _setting(10.0, ("WORKER_WEBHOOK_TIMEOUT",), None,
                                      "Seconds one webhook try may take, connect to last "
                                      "byte; 4 tries.", config=False)
    result_ttl: float = _setting(1800.0, ("WORKER_RESULT_TTL",), None,
                                 "Local API and the queue: seconds a finished job's "
                                 "record is kept.",
                                 config=False)
    max_run_mb: float = _setting(10.0, ("WORKER_MAX_RUN_MB",), None,
                                 "Local API: largest /run request body, MiB.", config=False)
    max_runsync_mb: float = _setting(20.0, ("WORKER_MAX_RUNSYNC_MB",), None,
                                     "Local API: largest /runsync request body, MiB.",
                                     config=False)
    api_queue_jobs: int = _setting(1000, ("WORKER_API_QUEUE_JOBS",), None,
                                   "Local API: jobs that may wait in the queue; past it /run "
                                   "and /runsync answer 429 with Retry-After.", config=False)
    api_queue_mb: float = _setting(256.0, ("WORKER_API_QUEUE_MB",), None,
                                   "Local API: MiB of request bodies that may wait in the queue; "
                                   "past it 429 with Retry-After. Also the MiB of finished "
                                   "results kept: past it the oldest records go before "
                                   "WORKER_RESULT_TTL.", config=False)
    rp_debugger: bool = _setting(False, ("WORKER_RP_DEBUGGER",), "--rp_debugger",
                                 "Add the rp_debugger timings (FunctionTimer/LineTimer) and "
                                 "system info to each dict output as `rp_debugger`, as the "
                                 "SDK's flag does. Checkpoints are cleared after every job "
                                 "either way.", config=False)
    checks: str = _setting("auto", ("WORKER_CHECKS",), None,
                           "Checks before the first child takes jobs (a failure makes the "
                           "worker unhealthy): the fitness checks the handler registered "
                           "(register_fitness_check) and the built-in GPU check (when NVML "
                           "sees a GPU, CUDA must initialise in the child and each device "
                           "take a small allocation). auto: the handler's checks in the "
                           "production modes only (runpod, load_balancer, redis), as the "
                           "SDK, and the GPU check; on: the handler's in every mode too; "
                           "off: none; require_gpu: as auto, and a usable GPU must be "
                           "found (NVML, CUDA, a torch built for a CUDA the driver "
                           "supports; the GPU image sets it). Words of the two parts "
                           "combine: e.g. on,no_gpu or off,require_gpu.", config=False)
    health_file: str = _setting("", ("WORKER_HEALTH_FILE",), None,
                                "Write the worker's state to this file on every change, for "
                                "`python -m worker.healthcheck` (the images' HEALTHCHECK; they "
                                "set /tmp/gpu-worker/health.json) in every mode; empty = "
                                "off.", config=False)
    metrics_port: int = _setting(0, ("WORKER_METRICS_PORT",), None,
                                 "Serve Prometheus metrics at /metrics on this port, in any "
                                 "mode, without a token (the local API's own /metrics is "
                                 "behind WORKER_API_TOKEN); 0 = off.", config=False)
    metrics_host: str = _setting("127.0.0.1", ("WORKER_METRICS_HOST",), None,
                                 "Address of the metrics port: loopback unless told (e.g. "
                                 "0.0.0.0 for a scraper outside the container; empty = "
                                 "127.0.0.1).",
                                 config=False)
    realtime_port: int = _setting(0, ("RUNPOD_REALTIME_PORT",), None,
                                  "Serve the local API on 0.0.0.0 at this port (the SDK's "
                                  "realtime mode); 0 = off.", config=False)
    load_balancer: bool = _setting(False, ("WORKER_LOAD_BALANCER",), "--load_balancer",
                                   "RunPod load-balancing endpoint: the job routes on PORT, "
                                   "GET /ping on PORT_HEALTH, no queue. Also on when "
                                   "PORT_HEALTH is set outside the RunPod queue.", config=False)
    port: int = _setting(80, ("PORT",), None,
                         "Load-balancing mode: the port of the job routes (0.0.0.0).",
                         config=False)
    port_health: int = _setting(0, ("PORT_HEALTH",), None,
                                "Load-balancing mode: the port of GET /ping; 0 = PORT.",
                                config=False)
    runpod_get_job: str = _setting("", ("RUNPOD_WEBHOOK_GET_JOB",), None,
                                   "The RunPod queue's job-take URL (the platform sets it): "
                                   "with it, and no --test_input, jobs come from the RunPod "
                                   "queue.", config=False)
    queue_url: str = _setting("", ("WORKER_QUEUE_URL",), None,
                              "A Redis Streams endpoint (redis:// or rediss://, with an ACL "
                              "user and password if any): with it and WORKER_ENDPOINT, jobs "
                              "come from the endpoint's stream (docs/fleet.md). A secret: "
                              "never in the child or a log line.", config=False,
                              secret=True)
    queue_password_file: str = _setting("", ("WORKER_QUEUE_PASSWORD_FILE",), None,
                                        "A file holding the queue's password (a mounted "
                                        "secret); it wins over the URL's.", config=False)
    queue_endpoint: str = _setting("", ("WORKER_ENDPOINT",), None,
                                   "The endpoint's name on the queue (no default: two "
                                   "handlers never share a stream by accident); the "
                                   "gateway serves a comma-separated list.", config=False)
    queue_lease_s: float = _setting(30.0, ("WORKER_QUEUE_LEASE_S",), None,
                                    "Seconds a job's entry stays with a worker that stops "
                                    "renewing it (a dead or cut-off worker) before another "
                                    "takes it; renewed every lease/3 while it runs.",
                                    config=False)
    queue_max_deliveries: int = _setting(3, ("WORKER_QUEUE_MAX_DELIVERIES",), None,
                                         "Deliveries of a job (runs whose worker died or "
                                         "lost its lease) before it goes to the dead-letter "
                                         "stream, FAILED.", config=False)
    endpoint_id: str = _setting("", ("RUNPOD_ENDPOINT_ID",), None,
                                "The endpoint's id: the local API also answers POST "
                                "/{id}/realtime (the SDK's realtime route).", config=False)
    child_keep_caps: tuple = _setting((), ("WORKER_CHILD_KEEP_CAPS",), None,
                                      "Capabilities the child keeps although they could read "
                                      "the parent's secrets (SYS_PTRACE, SYS_ADMIN, PERFMON, "
                                      "SYS_MODULE, SYS_RAWIO, BPF; comma-separated): e.g. "
                                      "SYS_ADMIN for GPU performance "
                                      "counters (Nsight Compute) where the driver restricts "
                                      "profiling to admins.", config=False)
    child_user: str = _setting("", ("WORKER_CHILD_USER",), None,
                               "Run each child as this user (a name or a uid; the worker "
                               "runs as root): no process that is not its own — pid 1 "
                               "included — can be read by the handler. The user needs to "
                               "read the handler and Python, and to write its HOME and the "
                               "model cache; GPU device files are usually open to all.",
                               config=False)
    child_env_pass: tuple = _setting((), ("WORKER_CHILD_ENV_PASS",), None,
                                     "Secrets the child normally never sees "
                                     "(RUNPOD_AI_API_KEY, WORKER_API_TOKEN) that it may "
                                     "see after all, comma-separated.", config=False)
    worker_id: str = _setting("", ("RUNPOD_POD_ID",), None,
                              "Worker id used in error records (the SDK's RUNPOD_POD_ID).",
                              config=False)
    hostname: str = _setting("", ("RUNPOD_POD_HOSTNAME",), None,
                             "Host name used in error records.", config=False)
    test_input: str = _setting(None, (), "--test_input",
                               "One-shot local test: the job as JSON (else ./test_input.json).",
                               config=False)
    test_output: str = _setting(None, (), "--test_output",
                                "One-shot local test: expected output as JSON; a mismatch exits 1.",
                                config=False)

    def __post_init__(self):
        # What each value may be, and the checks that must hold whatever set the values
        # (a start() dict included): setting_rules.py. It answers the values normalised.
        for name, value in setting_rules.check(self).items():
            object.__setattr__(self, name, value)

    # --- what follows from the settings -----------------------------------------------

    max_vram_mb = property(lambda self: setting_rules.vram_limit(self.max_vram)[0])
    max_vram_fraction = property(lambda self: setting_rules.vram_limit(self.max_vram)[1])

    @property
    def heartbeat_period(self) -> float:
        """heartbeat_interval, or a tenth of heartbeat_timeout (at most 1 s) when 0."""
        if self.heartbeat_interval > 0:
            return max(0.05, self.heartbeat_interval)
        return 1.0 if self.heartbeat_timeout <= 0 else min(1.0, max(0.05,
                                                                    self.heartbeat_timeout / 10))

    @property
    def handler_checks(self) -> bool:
        """Run the handler's fitness checks: asked for, or `auto` in a production mode
        (run_modes.py settles `run_mode` before the first child starts)."""
        handler = setting_rules.checks_parts(self.checks).get("handler", "auto")
        return handler == "on" or (handler == "auto" and
                                   self.run_mode in setting_rules.PRODUCTION_MODES)

    gpu_check = property(lambda self: setting_rules.checks_parts(self.checks).get(
        "gpu", "gpu") != "no_gpu")
    require_gpu = property(lambda self: setting_rules.checks_parts(self.checks).get(
        "gpu") == "require_gpu")

    # --- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None,
             config: Mapping[str, Any] | None = None) -> "Settings":
        """Settings from the start() dict, flags, environment and defaults, in that order of
        precedence (setting_sources.py, which also says where each came from)."""
        return setting_sources.resolve(cls, env, flags, config).settings

    def with_config(self, config: Mapping[str, Any]) -> "Settings":
        """Apply start() config keys that name settings; other keys are ignored here."""
        return setting_sources.apply_config(self, config)[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Settings":
        return cls(**{k: tuple(v) if FIELDS[k].type == "tuple" else v
                      for k, v in data.items()})


def config_keys() -> set[str]:
    """Setting names that a start() config may carry (old names included)."""
    return setting_sources.config_keys(Settings)


def start_key_notes(config: Mapping[str, Any]) -> list[str]:
    """A line for each start() key that looks meant for a setting but sets none."""
    return setting_sources.start_key_notes(Settings, config)


def resolve(env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None,
            config: Mapping[str, Any] | None = None) -> setting_sources.Resolved:
    """Settings and where each value came from."""
    return setting_sources.resolve(Settings, env, flags, config)


def describe() -> list[dict]:
    """One row per setting (for --help, `worker config` and docs/configuration.md)."""
    return [{"name": f.name, "env": f.metadata["env"], "flag": f.metadata["flag"],
             "default": f.default, "help": f.metadata["help"],
             "start_config": f.metadata["config"], "secret": f.metadata["secret"]}
            for f in dataclasses.fields(Settings)]


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
