"""Containers of the images on the host's network, for docker_tests/ and
bench/bench_docker.py (no pytest and no loopback guard here: each side brings its own)."""
import os
import subprocess
import time
import uuid
from pathlib import Path

import requests

from tests.support import _free_port

HERE = Path(__file__).resolve().parent
IMAGE = os.environ.get("DOCKER_TEST_IMAGE", "gpu-worker:cpu")
GPU_IMAGE = os.environ.get("DOCKER_TEST_GPU_IMAGE", "gpu-worker:gpu")
MOUNT = "/app/docker_tests"


def docker(*args, timeout=120, check=False) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          timeout=timeout, check=check)


def unusable(image: str) -> str | None:
    """Why `image` cannot be run here, or None."""
    try:
        if docker("info", timeout=20).returncode != 0:
            return "no Docker engine answers (make docker-test starts one)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no docker command that answers ({exc})"
    if docker("image", "inspect", image).returncode != 0:
        how = "DOCKER_TEST_GPU=1 make docker-test" if image == GPU_IMAGE else "make docker-test"
        return f"the image {image} is not built ({how} builds it)"
    return None


class Container:
    """One detached container on the host's network: its local API (when on) on a free
    loopback port; our test handlers mounted read-only at /app/docker_tests."""

    def __init__(self, image: str, *command: str, env: dict | None = None,
                 docker_args: tuple = (), api: bool = True):
        self.name = f"gw-test-{uuid.uuid4().hex[:10]}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {"WORKER_PRELOAD": "", **({"WORKER_SERVE_API": "true",
                                                   "WORKER_API_PORT": str(self.port)}
                                                  if api else {}), **(env or {})}
        args = ["run", "-d", "--name", self.name, "--network", "host",
                "-v", f"{HERE}:{MOUNT}:ro", *docker_args]
        for key, value in environment.items():
            args += ["-e", f"{key}={value}"]
        self.started = time.monotonic()
        proc = docker(*args, image, *command)
        if proc.returncode != 0:
            docker("rm", "-f", self.name)
            raise AssertionError(f"docker run failed: {proc.stderr.strip()}")

    def wait_api(self, timeout: float = 60.0) -> float:
        """Seconds from `docker run` to the first answer of /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/health", timeout=1)
                return time.monotonic() - self.started
            except requests.RequestException:
                assert self.running(), self.logs()
                time.sleep(0.05)
        raise AssertionError(f"no answer from {self.url}/health:\n{self.logs()}")

    def post(self, path: str, body: dict, timeout: float = 120.0) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=body, timeout=timeout)

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=5).json()

    def until(self, predicate, timeout: float = 60.0, what: str = "a condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what} never came:\n{self.logs()}")

    def state(self, field: str) -> str:
        return docker("inspect", "-f", "{{" + field + "}}", self.name).stdout.strip()

    def running(self) -> bool:
        return self.state(".State.Running") == "true"

    def exit_code(self) -> int:
        return int(self.state(".State.ExitCode"))

    def logs(self) -> str:
        proc = docker("logs", self.name)
        return proc.stdout + proc.stderr

    def stop(self, *args: str) -> float:
        """`docker stop` with `args`; the seconds it took."""
        t0 = time.monotonic()
        docker("stop", *args, self.name, check=True)
        return time.monotonic() - t0

    def remove(self) -> None:
        docker("rm", "-f", self.name)
