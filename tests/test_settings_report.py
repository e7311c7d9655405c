"""`python -m worker config`: each setting's value and where it came from, the run mode and
why, secrets redacted, the handler never imported; the same table logged by a running
worker with what its start() dict set; the old names still working, each said once."""
import json
import os

import pytest

from tests.support import HANDLERS, PYTHON, run_cli
from worker import setting_sources
from worker.config import Settings, resolve

# A clean environment: the caller's WORKER_*/RUNPOD_* settings must not leak in.
BASE = {k: v for k, v in os.environ.items()
        if not k.startswith(("WORKER_", "RUNPOD_")) and k not in ("PORT", "PORT_HEALTH")}
BASE["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] = "true"


def config(*args, env=None):
    proc = run_cli([PYTHON, "-m", "worker", "config", *args, "--json"],
                   env={**BASE, **(env or {})})
    data = json.loads(proc.stdout)
    assert proc.returncode == (2 if data["refused"] else 0), proc.stderr     # as the worker
    return data, {row["name"]: row for row in data["settings"]}


def test_config_says_each_value_and_its_source_without_importing_the_handler(tmp_path):
    marker = tmp_path / "imported"
    data, rows = config(str(HANDLERS / "start_keys.py"), "--job_timeout", "7",
                        env={"WORKER_MAX_RSS_MB": "900", "RUNPOD_POD_ID": "pod-9",
                             "WORKER_HEARTBEAT_TIMEOUT": "5",
                             "START_SETTINGS_MARKER": str(marker)})
    assert not marker.exists()                  # a handler may load a model at import
    assert rows["job_timeout"] == {**rows["job_timeout"], "value": "7.0",
                                   "source": "flag --job_timeout", "default": False}
    assert (rows["max_rss_mb"]["value"], rows["max_rss_mb"]["source"]) == \
        ("900.0", "env WORKER_MAX_RSS_MB")
    assert (rows["worker_id"]["value"], rows["worker_id"]["source"]) == \
        ("pod-9", "env RUNPOD_POD_ID")
    assert (rows["stop_grace"]["value"], rows["stop_grace"]["source"]) == ("5.0", "default")
    # derived: a tenth of the heartbeat timeout
    assert (rows["heartbeat_interval"]["value"], rows["heartbeat_interval"]["source"]) == \
        ("0.5", "derived from heartbeat_timeout")
    assert len(rows) == len(Settings.__dataclass_fields__)


def test_config_text_lists_every_setting_by_topic():
    proc = run_cli([PYTHON, "-m", "worker", "config"], env={**BASE, "WORKER_SPARE": "on"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mode: test — the one-shot test (no job source is set)")
    assert "[Jobs and limits]" in proc.stdout and "[Advanced]" in proc.stdout
    spare = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["spare"])
    assert spare.split() == ["spare", "on", "env", "WORKER_SPARE"]
    for name in Settings.__dataclass_fields__:
        assert any(line.split()[:1] == [name] for line in proc.stdout.splitlines()), name


def test_config_redacts_secrets():
    data, rows = config(env={"WORKER_API_TOKEN": "tok-very-secret",
                             "WORKER_QUEUE_URL": "rediss://user:pw-very-secret@q.internal:6380/0",
                             "WORKER_ENDPOINT": "ep",
                             "WORKER_WEBHOOK_PROXY": "http://u:proxy-secret@proxy:3128"})
    text = json.dumps(data)
    for secret in ("tok-very-secret", "pw-very-secret", "proxy-secret"):
        assert secret not in text
    assert rows["api_token"]["value"] == "***"
    assert rows["queue_url"]["value"] == "rediss://***@q.internal:6380/0"
    assert rows["api_token"]["source"] == "env WORKER_API_TOKEN"


@pytest.mark.parametrize("args, env, mode, why", [
    ((), {}, "test", "no job source is set"),
    (("--test_input", "{}"), {"RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"}, "test",
     "--test_input is given"),
    (("--rp_serve_api",), {}, "api", "--rp_serve_api"),
    ((), {"WORKER_SERVE_API": "1", "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"}, "api",
     "WORKER_SERVE_API"),
    ((), {"RUNPOD_REALTIME_PORT": "8089"}, "realtime", "RUNPOD_REALTIME_PORT is set"),
    ((), {"PORT_HEALTH": "8081"}, "load_balancer", "PORT_HEALTH is set"),
    (("--load_balancer",), {}, "load_balancer", "--load_balancer"),
    ((), {"WORKER_QUEUE_URL": "redis://127.0.0.1:1", "WORKER_ENDPOINT": "e",
          "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"}, "redis", "WORKER_QUEUE_URL"),
    ((), {"RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"}, "runpod",
     "RUNPOD_WEBHOOK_GET_JOB is set"),
    ((), {"WORKER_MODE": "api", "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"}, "api",
     "WORKER_MODE"),
])
def test_config_names_the_mode_and_why(args, env, mode, why):
    data, rows = config(*args, env=env)
    assert (data["mode"], rows["run_mode"]["value"]) == (mode, mode)
    assert why in data["mode_reason"] and data["refused"] is None
    assert rows["run_mode"]["source"] == ("env WORKER_MODE" if "WORKER_MODE" in env
                                      else f"derived: {data['mode_reason']}")


@pytest.mark.parametrize("env, args, refusal", [
    ({"WORKER_MODE": "runpod"}, (), "WORKER_MODE=runpod needs RUNPOD_WEBHOOK_GET_JOB"),
    ({"WORKER_MODE": "redis", "WORKER_QUEUE_URL": "redis://127.0.0.1:1"}, (),
     "WORKER_MODE=redis needs WORKER_ENDPOINT"),
    ({"WORKER_MODE": "realtime"}, (), "WORKER_MODE=realtime needs RUNPOD_REALTIME_PORT"),
    ({"WORKER_MODE": "runpod", "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"},
     ("--rp_serve_api",), "but --rp_serve_api asks for the local API"),
    ({"WORKER_QUEUE_URL": "redis://127.0.0.1:1"}, (), "WORKER_QUEUE_URL needs WORKER_ENDPOINT"),
    ({"WORKER_RELOAD": "true", "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x"}, (),
     "a queue worker takes new code by a new deploy"),
    ({"WORKER_MODE": "api", "WORKER_LOAD_BALANCER": "true"}, (),
     "WORKER_MODE=api, but --load_balancer asks for a RunPod load-balancing endpoint"),
    ({"WORKER_MODE": "runpod", "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:1/x",
      "RUNPOD_REALTIME_PORT": "8123"}, (),
     "RUNPOD_REALTIME_PORT asks for the local API on the realtime port"),
    ({"WORKER_QUEUE_URL": "http://127.0.0.1:1", "WORKER_ENDPOINT": "e"}, (),
     "WORKER_QUEUE_URL must be a redis:// or rediss:// URL"),
    ({"WORKER_QUEUE_URL": "redis://127.0.0.1:1", "WORKER_ENDPOINT": "bad name!"}, (),
     "WORKER_ENDPOINT: "),
    ({"WORKER_QUEUE_URL": "redis://127.0.0.1:1", "WORKER_ENDPOINT": "e",
      "WORKER_QUEUE_PASSWORD_FILE": "/nonexistent/pw"}, (),
     "WORKER_QUEUE_PASSWORD_FILE cannot be read"),
    ({"WORKER_STRICT_SETTINGS": "true", "WORKER_JOB_TIMOUT": "5"}, (),
     "WORKER_JOB_TIMOUT is not a setting"),
    ({"WORKER_QUEUE_URL": "redis://u:pw@[::1:1", "WORKER_ENDPOINT": "e"}, (),
     "WORKER_QUEUE_URL must be a redis:// or rediss:// URL"),
    ({"WORKER_CHILD_USER": "no-such-user-x"}, (),
     "cannot run as WORKER_CHILD_USER='no-such-user-x': no such user"),
    ({"WORKER_METRICS_PORT": "8000"}, ("--rp_serve_api",),
     "WORKER_METRICS_PORT=8000 is a port the api mode serves on"),
])
def test_settings_that_cannot_run_together_are_refused_before_anything_starts(
        env, args, refusal, tmp_path):
    data, _ = config(*args, env=env)
    assert refusal in data["refused"]
    marker = tmp_path / "imported"
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "start_keys.py"), *args],
                   env={**BASE, **env, "START_SETTINGS_MARKER": str(marker)}, timeout=60)
    assert not marker.exists()                    # the handler never ran
    assert proc.returncode == 2 and proc.stderr.startswith("worker: error: ")
    assert refusal in proc.stderr, proc.stderr
    assert "ready in" not in proc.stderr          # no child was started


@pytest.mark.parametrize("old, value, name, new", [
    ("WORKER_MAX_VRAM_MB", "500", "max_vram", "500"),
    ("WORKER_MAX_VRAM_FRACTION", "0.9", "max_vram", "90%"),
    ("WORKER_FITNESS_CHECKS", "on", "checks", "on"),
    ("WORKER_GPU_CHECK", "false", "checks", "no_gpu"),
    ("WORKER_REQUIRE_GPU", "true", "checks", "require_gpu"),
])
def test_each_old_name_still_works_and_says_once_what_replaced_it(old, value, name, new):
    assert getattr(Settings.load(env={old: value}), name) == new
    data, rows = config(env={old: value})
    assert (rows[name]["value"], rows[name]["source"]) == (new, f"env {old} (deprecated)")
    assert data["not_settings"] == []            # an old name is not "misspelt"
    # a real worker says it once, and runs
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "edges.py"), "--test_input",
                    '{"input": {"do": "echo", "value": 1}}'],
                   env={**BASE, old: value, "WORKER_CHECKS": ""}, timeout=120)
    said = [line for line in proc.stderr.splitlines() if f"{old} is deprecated" in line]
    assert len(said) == 1, proc.stderr[-2000:]
    assert said[0].startswith(f"worker: warning: {old} is deprecated; use ")


def test_config_shows_what_the_mode_and_reload_change_as_a_run_would_use_it():
    """The realtime mode serves on 0.0.0.0 at its port, --reload turns the spare and warm
    refresh off: `config` shows the values the run uses, and why."""
    _, rows = config(env={"RUNPOD_REALTIME_PORT": "8123"})
    assert (rows["api_host"]["value"], rows["api_port"]["value"]) == ("0.0.0.0", "8123")
    assert rows["api_port"]["source"] == "derived: RUNPOD_REALTIME_PORT"
    data, rows = config("serve", str(HANDLERS / "edges.py"), "--reload",
                        env={"WORKER_SPARE": "on", "WORKER_WARM_REFRESH": "true"})
    assert data["mode"] == "api" and data["refused"] is None     # `config serve` as `serve`
    assert (rows["spare"]["value"], rows["warm_refresh"]["value"]) == ("off", "false")
    assert rows["spare"]["source"].startswith("env WORKER_SPARE, overridden: --reload")


def test_config_says_what_a_worker_would_refuse(tmp_path):
    data, _ = config("no_such_handler.py")
    assert data["refused"] == "handler file not found: no_such_handler.py"
    # a handler's one-shot test: the input it would run, read as the run reads it
    data, _ = config(str(HANDLERS / "edges.py"), "--test_input", "{bad")
    assert data["refused"].startswith("--test_input is not valid JSON")
    data, _ = config(str(HANDLERS / "edges.py"), "--test_input", '{"input": {}}')
    assert data["refused"] is None
    for env, refusal in (({"WORKER_CHILD_ENV_PASS": "RUNPOD_AI_APIKEY"},
                          "WORKER_CHILD_ENV_PASS names RUNPOD_AI_APIKEY"),
                         ({"RUNPOD_WEBHOOK_GET_JOB": "notaurl"},
                          "RUNPOD_WEBHOOK_GET_JOB must be an http:// or https:// URL"),
                         ({"WORKER_API_PORT": "0", "WORKER_SERVE_API": "1"},
                          "the local API needs a port")):
        proc = run_cli([PYTHON, "-m", "worker", "config", "--json"], env={**BASE, **env})
        data = json.loads(proc.stdout)
        assert proc.returncode == 2 and refusal in (data.get("refused") or data["error"])
    proc = run_cli([PYTHON, "-m", "worker", "config", "--json"],
                   env={**BASE, "WORKER_API_PORT": "70000"})
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"error": "WORKER_API_PORT=70000: api_port must be at "
                                                "most 65,535"}


def test_a_url_setting_is_shown_without_its_credentials():
    _, rows = config(env={"RUNPOD_WEBHOOK_GET_JOB":
                          "https://user:hunter22@127.0.0.1:1/take?token=abc&x=1",
                          "WORKER_API_TOKEN": "tok://secretvalue"})
    assert rows["runpod_get_job"]["value"] == "https://***@127.0.0.1:1/take?token=***&x=1"
    assert rows["api_token"]["value"] == "***"
    # wherever a URL is: a test input, an allow list; a queue URL that is not one at all
    data, rows = config("--test_input", '{"input": {"u": "https://user:pw-in-input@h/x"}}',
                        env={"WORKER_WEBHOOK_ALLOW": "http://u:pw-in-list@h,10.0.0.0/8",
                             "WORKER_QUEUE_URL": "redis:u:pw-no-slashes@h"})
    assert "pw-in" not in json.dumps(data) and "pw-no-slashes" not in json.dumps(data)
    assert rows["webhook_allow"]["value"] == "http://***@h,10.0.0.0/8"
    assert rows["queue_url"]["value"] == "***"
    # a password that holds ',' (a URL's end for a lazy reader), a queue URL with no scheme
    # quoted by an error
    data, rows = config(env={"RUNPOD_WEBHOOK_GET_JOB": "https://bob:s3cr,etpw@127.0.0.1:1/t",
                             "WORKER_QUEUE_URL": ":Sup3rSecretPw@127.0.0.1:6379/0",
                             "WORKER_ENDPOINT": "e"})
    assert "etpw" not in json.dumps(data) and "Sup3r" not in json.dumps(data)
    assert data["refused"] == "WORKER_QUEUE_URL must be a redis:// or rediss:// URL"


def test_the_modes_that_listen_beyond_loopback_say_so():
    """Load balancing serves on 0.0.0.0:$PORT whatever WORKER_API_HOST says: `config`
    shows that, not the loopback the variable asked for."""
    _, rows = config(env={"WORKER_LOAD_BALANCER": "true", "WORKER_API_HOST": "127.0.0.1",
                          "PORT": "18080"})
    assert (rows["api_host"]["value"], rows["api_port"]["value"]) == ("0.0.0.0", "18080")
    assert rows["api_host"]["source"].startswith("env WORKER_API_HOST, overridden: load")


def test_settings_that_ask_for_a_mode_not_picked_are_named():
    """`serve --test_input`: the local API wins (as in the SDK), and the test input is
    said not to be used, by `config` and at the worker's start."""
    data, _ = config("serve", str(HANDLERS / "edges.py"), "--test_input", "{}")
    assert data["mode"] == "api"
    assert data["unused"] == ["--test_input is not used: the worker runs the local API "
                              "(--rp_serve_api, `worker serve` or WORKER_SERVE_API)"]
    data, _ = config(env={"WORKER_MODE": "api", "WORKER_QUEUE_URL": "redis://127.0.0.1:1"})
    assert data["unused"][0].startswith("WORKER_QUEUE_URL is not used")


def test_a_platform_log_level_the_sdk_would_refuse_does_not_stop_the_worker():
    """RUNPOD_LOG_LEVEL=WARNING (or empty, as templates leave it) used to raise at the
    package's import, before even --help."""
    for value in ("WARNING", "critical", ""):
        env = {**BASE, "RUNPOD_LOG_LEVEL": value, "RUNPOD_DEBUG_LEVEL": value}
        assert run_cli([PYTHON, "-m", "worker", "--help"], env=env).returncode == 0, value
        data, rows = config(env={"RUNPOD_LOG_LEVEL": value})
        assert rows["log_level"]["value"] == (value.upper() or "INFO")


def test_a_heartbeat_timeout_from_start_is_held_above_the_childs_beat():
    """The child beats at the period it started with (a tenth of the variable's timeout,
    at most 1 s): a start() timeout under it would have every child declared hung, so it
    is a one-line setup failure; one above it runs a job longer than itself."""
    cmd = [PYTHON, "-m", "worker", str(HANDLERS / "short_heartbeat.py"), "--test_input",
           '{"input": {"seconds": 2}}']
    short = run_cli(cmd, env={**BASE, "HEARTBEAT_TIMEOUT": "0.5"}, timeout=120)
    assert "heartbeat_timeout (0.5 s) must be longer than the heartbeat interval (1 s)" \
        in short.stderr and "Traceback" not in short.stderr, short.stderr[-2000:]
    longer = run_cli(cmd, env={**BASE, "HEARTBEAT_TIMEOUT": "30"}, timeout=120)
    assert longer.returncode == 0 and "COMPLETED" in longer.stdout, longer.stderr[-2000:]


def test_a_bad_start_value_is_one_line_not_a_traceback():
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "start_bad_value.py"),
                    "--test_input", '{"input": {}}'], env=BASE, timeout=120)
    assert "handler setup failed: start() key 'job_timeout'=-5 is not valid" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_an_old_value_that_asks_for_the_default_still_says_it_is_deprecated():
    assert Settings.load(env={"WORKER_GPU_CHECK": "true"}).checks == "auto"
    resolved = resolve(env={"WORKER_GPU_CHECK": "true"})
    assert resolved.deprecated == ["WORKER_GPU_CHECK is deprecated; use WORKER_CHECKS=auto"]


def test_the_old_start_key_works_and_the_worker_logs_what_is_in_force(tmp_path):
    """A running worker logs, once its first child is ready, the settings not at their
    default, with the start() dict's among them; the old start() key is said once although
    every job makes a new child (refresh_worker)."""
    marker = tmp_path / "imported"
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "start_keys.py"),
                    "--test_input", '{"input": {}}'],
                   env={**BASE, "WORKER_JOB_TIMEOUT": "77", "START_SETTINGS_MARKER":
                        str(marker)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists()
    table = proc.stderr[proc.stderr.index("settings in force:"):]
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]
             if line.startswith("  ") and not line.startswith("  (")}
    assert lines["job_timeout"] == ["77.0", "env", "WORKER_JOB_TIMEOUT"]
    assert lines["refresh_worker"] == ["true", "start()", "key", "'refresh_worker'"]
    assert lines["max_vram"] == ["100", "start()", "key", "'max_vram_mb'"]
    assert lines["run_mode"] == ["test", "derived:", "--test_input", "is", "given"]
    assert "stop_grace" not in lines               # at its default: INFO leaves it out
    assert proc.stderr.count(" ready in ") == 2              # refresh_worker: a second child
    for line in ("start() key 'max_vram_mb' is deprecated; use 'max_vram': '100'",
                 "start() key 'job_timout' is not a setting; did you mean 'job_timeout'?",
                 "start() key 'run_mode' is ignored: run_mode is read before the module "
                 "runs (set WORKER_MODE)"):
        assert proc.stderr.count(line) == 1, (line, proc.stderr[-3000:])
    assert "my_own_key" not in proc.stderr           # the handler's own keys, as in the SDK


def test_the_worker_s_help_names_its_commands_and_every_setting_is_in_config_help():
    top = run_cli([PYTHON, "-m", "worker", "--help"], env=BASE)
    assert top.returncode == 0
    for command in ("worker serve HANDLER.py", "worker gateway", "worker config"):
        assert command in top.stdout
    assert "worker config --help` lists every one" in " ".join(top.stdout.split())
    full = run_cli([PYTHON, "-m", "worker", "config", "--help"], env=BASE)
    assert full.returncode == 0
    for field in Settings.__dataclass_fields__.values():
        for name in field.metadata["env"] or (field.metadata["flag"],):
            assert name in full.stdout, name

