"""Settings: precedence, parsing, old names, where each value came from, and the mode."""
import os
import re

import pytest

from tests.support import ROOT
from worker.config import Settings, SettingsError, config_keys, describe


def test_defaults():
    s = Settings.load(env={})
    assert s.job_timeout == 0 and s.start_method == "forkserver" and s.preload == ()


def test_precedence_config_over_flags_over_env():
    env = {"WORKER_JOB_TIMEOUT": "10", "WORKER_MAX_JOBS_PER_CHILD": "3",
           "WORKER_PRELOAD": "torch, numpy"}
    s = Settings.load(env=env)
    assert (s.job_timeout, s.max_jobs_per_child, s.preload) == (10.0, 3, ("torch", "numpy"))
    s = Settings.load(env=env, flags={"job_timeout": "20"})
    assert s.job_timeout == 20.0
    s = Settings.load(env=env, flags={"job_timeout": "20"}, config={"job_timeout": 30,
                                                                    "handler": print})
    assert s.job_timeout == 30.0 and s.max_jobs_per_child == 3


def test_runpod_names_are_read():
    s = Settings.load(env={"RUNPOD_LOG_LEVEL": "DEBUG", "RUNPOD_POD_ID": "pod-1",
                           "RUNPOD_POD_HOSTNAME": "host-1"})
    assert (s.log_level, s.worker_id, s.hostname) == ("DEBUG", "pod-1", "host-1")
    # the WORKER_ name wins over the SDK's
    assert Settings.load(env={"WORKER_LOG_LEVEL": "WARN", "RUNPOD_LOG_LEVEL": "DEBUG"}) \
        .log_level == "WARN"


def test_start_config_keys():
    s = Settings().with_config({"refresh_worker": True, "return_aggregate_stream": "yes",
                                "handler": print, "concurrency_modifier": len})
    assert s.refresh_worker is True and s.return_aggregate_stream is True
    assert "refresh_worker" in config_keys() and "worker_id" not in config_keys()
    # identity settings cannot come from start()
    assert Settings().with_config({"worker_id": "x"}).worker_id == ""


@pytest.mark.parametrize("env, message", [
    ({"WORKER_JOB_TIMEOUT": "soon"}, "WORKER_JOB_TIMEOUT='soon' is not valid for job_timeout"),
    ({"WORKER_MAX_JOBS_PER_CHILD": "1.5"}, "WORKER_MAX_JOBS_PER_CHILD"),
    ({"WORKER_REFRESH_WORKER": "maybe"}, "expected true or false"),
    ({"WORKER_STOP_GRACE": "-1"}, "must be a finite number >= 0"),
    ({"WORKER_JOB_TIMEOUT": "nan"}, "must be a finite number >= 0"),
    ({"WORKER_START_METHOD": "fork"}, "forkserver or spawn"),
    ({"WORKER_MAX_VRAM": "150%"}, "give MiB (e.g. 4096), a percentage"),
    ({"WORKER_MAX_VRAM": "lots"}, "WORKER_MAX_VRAM='lots'"),
    ({"WORKER_MODE": "queue"}, "WORKER_MODE='queue': run_mode must be auto, api"),
    ({"WORKER_CHECKS": "maybe"}, "checks must be auto, on, off or require_gpu"),
    ({"WORKER_MAX_VRAM_FRACTION": "2"}, "WORKER_MAX_VRAM_FRACTION='2' is not valid"),
    ({"WORKER_MAX_VRAM": "4096", "WORKER_MAX_VRAM_MB": "5"},
     "WORKER_MAX_VRAM_MB and WORKER_MAX_VRAM both set max_vram (mb), differently"),
    ({"WORKER_MAX_VRAM": "4096,90%,1"}, "or both (4096,90%: the lower)"),
    ({"WORKER_CHECKS": "off", "WORKER_FITNESS_CHECKS": "on"},
     "WORKER_FITNESS_CHECKS and WORKER_CHECKS both set checks (handler checks)"),
    ({"WORKER_FITNESS_CHECKS": "true"}, "WORKER_FITNESS_CHECKS='true' is not valid"),
    ({"WORKER_MAX_VRAM_MB": "nan"}, "WORKER_MAX_VRAM_MB='nan' is not valid"),
    ({"WORKER_CHECKS": "on,off"}, "names the handler checks twice"),
    # past a ceiling a wait overflows the OS's timers, a port wraps round
    ({"WORKER_SETUP_TIMEOUT": "3000000"}, "setup_timeout must be at most 1,000,000 s"),
    ({"WORKER_STOP_GRACE": "1e9"}, "stop_grace must be at most 3,600 s"),
    ({"WORKER_API_PORT": "70000"}, "api_port must be at most 65,535"),
    ({"WORKER_METRICS_PORT": "83536"}, "metrics_port must be at most 65,535"),
    ({"WORKER_CHILD_OOM_SCORE_ADJ": "5000"}, "must be at most 1,000"),
    ({"WORKER_LOG_LEVEL": "garbage"}, "log_level must be DEBUG, INFO"),
    ({"WORKER_HEARTBEAT_INTERVAL": "0.001"}, "0 (derived) or 0.05 s or more"),
    ({"WORKER_HEARTBEAT_INTERVAL": "5", "WORKER_HEARTBEAT_TIMEOUT": "2"},
     "must be longer than the heartbeat interval (5 s)"),
    ({"WORKER_WEBHOOK_PROXY": "127.0.0.1:3128"}, "WORKER_WEBHOOK_PROXY must be http://host"),
    ({"WORKER_WEBHOOK_PROXY": "socks5://127.0.0.1:1080"}, "socks proxy is not supported"),
    ({"WORKER_WEBHOOK_PROXY": "http://u:pw@[::1:8080"}, "WORKER_WEBHOOK_PROXY must be http"),
    ({"WORKER_MAX_JOBS_PER_CHILD": "1" * 400}, "(400 characters): max_jobs_per_child must"),
    ({"WORKER_MAX_JOBS_PER_CHILD": "1" * 5000}, "(5002 characters) is not valid"),
    ({"WORKER_CHILD_KEEP_CAPS": "BOGUS"}, "WORKER_CHILD_KEEP_CAPS names BOGUS"),
])
def test_bad_values_name_their_source(env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.load(env=env)


def test_capability_names_are_read_as_people_write_them():
    assert Settings.load(env={"WORKER_CHILD_KEEP_CAPS": "cap_sys_admin, PERFMON"}) \
        .child_keep_caps == ("SYS_ADMIN", "PERFMON")


def test_every_number_has_a_ceiling():
    from worker import setting_rules
    numbers = {f.name for f in Settings.__dataclass_fields__.values()
               if f.type in ("int", "float")}
    assert numbers == set(setting_rules.MAXIMA)


@pytest.mark.parametrize("config, message", [
    ({"max_vram": "50%", "max_vram_fraction": 0.6}, "both set max_vram (fraction)"),
    ({"max_jobs_per_child": 2.7}, "expected an integer"),
    ({"job_timeout": 5_000_000}, "at most 1,000,000 s"),
    ({"heartbeat_timeout": 0.5}, "longer than the heartbeat interval (1 s)"),
])
def test_start_keys_are_held_to_the_same_rules(config, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings(heartbeat_interval=1.0).with_config(config)


def test_old_names_for_parts_of_the_checks_combine_as_they_did():
    """WORKER_FITNESS_CHECKS set the handler's checks only, WORKER_GPU_CHECK the GPU
    check only, WORKER_REQUIRE_GPU added the requirement: together they still mean that,
    beside the image's WORKER_CHECKS=require_gpu too."""
    s = Settings.load(env={"WORKER_FITNESS_CHECKS": "on", "WORKER_GPU_CHECK": "false"})
    assert (s.checks, s.handler_checks, s.gpu_check, s.require_gpu) == \
        ("on,no_gpu", True, False, False)
    s = Settings.load(env={"WORKER_CHECKS": "require_gpu", "WORKER_FITNESS_CHECKS": "off"})
    assert (s.checks, s.handler_checks, s.gpu_check, s.require_gpu) == \
        ("off,require_gpu", False, True, True)
    s = Settings.load(env={"WORKER_FITNESS_CHECKS": "off"})
    assert (s.checks, s.gpu_check) == ("off,gpu", True)     # the GPU check stays, as before
    # a required GPU ran the GPU check whatever WORKER_GPU_CHECK said
    s = Settings.load(env={"WORKER_GPU_CHECK": "false", "WORKER_REQUIRE_GPU": "true"})
    assert (s.checks, s.gpu_check, s.require_gpu) == ("require_gpu", True, True)
    # the GPU image says WORKER_CHECKS=require_gpu: an old "not required" is never ignored
    for old in ({"WORKER_REQUIRE_GPU": "false"}, {"WORKER_GPU_CHECK": "false"}):
        with pytest.raises(SettingsError, match="keep WORKER_CHECKS alone"):
            Settings.load(env={"WORKER_CHECKS": "require_gpu", **old})
    # 0 was "no limit": the other old name's limit stands; 90% and 90.0% are one limit;
    # both old limits stand together (the lower applies), from any mix of names
    assert Settings.load(env={"WORKER_MAX_VRAM_MB": "0",
                              "WORKER_MAX_VRAM_FRACTION": "0.9"}).max_vram == "90%"
    assert Settings.load(env={"WORKER_MAX_VRAM": "90.0%",
                              "WORKER_MAX_VRAM_FRACTION": "0.9"}).max_vram_fraction == 0.9
    s = Settings.load(env={"WORKER_MAX_VRAM_MB": "4096", "WORKER_MAX_VRAM_FRACTION": "0.9"})
    assert (s.max_vram, s.max_vram_mb, s.max_vram_fraction) == ("4096,90%", 4096, 0.9)
    s = Settings.load(env={"WORKER_MAX_VRAM_MB": "4096"}, config={"max_vram_fraction": 0.5})
    assert s.max_vram == "4096,50%"              # the start() key joined it, as it did
    assert Settings().with_config({"max_vram_mb": 2048, "max_vram_fraction": 0.5}) \
        .max_vram == "2048,50%"
    # 0 is a value ("no limit"): it disagrees with 4096, and a start() key of 0 lifts the
    # variable's limit; one share written two ways is one share
    with pytest.raises(SettingsError, match=r"both set max_vram \(mb\)"):
        Settings.load(env={"WORKER_MAX_VRAM": "4096", "WORKER_MAX_VRAM_MB": "0"})
    assert Settings.load(env={"WORKER_MAX_VRAM_MB": "4096"},
                         config={"max_vram_mb": 0}).max_vram_mb == 0
    assert Settings.load(env={"WORKER_MAX_VRAM": "33.3%",
                              "WORKER_MAX_VRAM_FRACTION": "0.333"}).max_vram == "33.3%"
    for bad in ({"max_vram_mb": True}, {"max_vram_mb": 1e300}):
        with pytest.raises(SettingsError, match="max_vram_mb"):
            Settings().with_config(bad)
    assert Settings.load(env={"WORKER_CHECKS": "off,off"}).checks == "off"   # as "off"
    assert Settings.load(env={"WORKER_MAX_VRAM_MB": "1234567"}).max_vram_mb == 1234567


def test_a_misspelt_setting_is_named_at_start_up_and_strict_mode_refuses_it():
    """WORKER_JOB_TIMOUT=1 used to run a 3 s job to the end without a word: the user
    believed a limit was in force. Now the name and the nearest setting are printed; with
    WORKER_STRICT_SETTINGS the worker does not start. The worker's own names for its
    children and platform names are not flagged."""
    import subprocess

    from tests.support import HANDLERS, PYTHON
    env = {**os.environ, "WORKER_JOB_TIMOUT": "1", "WORKER_CHILD_INDEX": "0",
           "RUNPOD_SOMETHING": "x", "PORT_HEALTH": ""}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    cmd = [PYTHON, "-m", "worker", str(HANDLERS / "edges.py"), "--test_input",
           '{"input": {"do": "sleep", "seconds": 0.1}}']
    warned = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert warned.returncode == 0, warned.stderr[-2000:]
    lines = [l for l in warned.stderr.splitlines() if "is not a setting" in l]
    assert lines == ["worker: warning: WORKER_JOB_TIMOUT is not a setting; did you mean "
                     "WORKER_JOB_TIMEOUT?"], warned.stderr[-2000:]
    strict = subprocess.run(cmd, env={**env, "WORKER_STRICT_SETTINGS": "true"},
                            capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2
    assert "worker: error: WORKER_JOB_TIMOUT is not a setting" in strict.stderr
    assert "local_test" not in strict.stdout + strict.stderr       # no job ran
