"""`make docker-test`: the images built and run as a user runs them, in one command.

Starts a Docker engine if none answers (and says so: `dockerd --bridge=none
--iptables=false --ip-masq=false`, every container on the host's network, reached on
127.0.0.1 only; it is left running, with its images, for the next run), builds the CPU image (docker/build.py; its cache makes a rebuild of an
unchanged tree seconds), runs docker_tests/, and prints the time of each part. Where
Docker cannot run at all it prints one line saying why and exits 0: there is nothing to
test. DOCKER_TEST_GPU=1 also builds the GPU image (several GB) and tests it without a GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docker"))
import build  # noqa: E402  (docker/build.py)

ENGINE_FLAGS = ["--bridge=none", "--iptables=false", "--ip-masq=false"]
ENGINE_WAIT_S = 60


def say(text: str) -> None:
    print(f"docker-test: {text}", file=sys.stderr, flush=True)


def engine() -> str | None:
    """None once an engine answers (started here if need be); else why none can."""
    if shutil.which("docker") is None:
        return "no docker command (Debian: apt-get install -y docker.io)"
    if build.engine_problem() is None:
        return None
    if shutil.which("dockerd") is None:
        return "no Docker engine runs and there is no dockerd to start (apt-get install -y docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine runs, and starting one needs root"
    log = Path(tempfile.gettempdir()) / "gpu-worker-dockerd.log"
    say(f"no Docker engine answered: starting one (dockerd {' '.join(ENGINE_FLAGS)}; "
        f"log in {log})")
    with open(log, "ab") as out:
        subprocess.Popen(["dockerd", *ENGINE_FLAGS], stdout=out, stderr=out,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + ENGINE_WAIT_S
    while time.monotonic() < deadline:
        if build.engine_problem() is None:
            return None
        time.sleep(0.5)
    return f"the Docker engine started here did not answer within {ENGINE_WAIT_S}s " \
        f"(see {log}; a sandbox without the rights dockerd needs cannot run containers)"


def main() -> int:
    t0 = time.monotonic()
    why = engine()
    if why:
        say(f"skipped: {why}")
        return 0
    flavours = ["cpu"] + (["gpu"] if os.environ.get("DOCKER_TEST_GPU") == "1" else [])
    for flavour in flavours:
        rc = build.main([flavour])
        if rc != 0:
            return rc
    built = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                         str(ROOT / "docker_tests"), *sys.argv[1:]], cwd=ROOT).returncode
    done = time.monotonic()
    say(f"{'passed' if rc == 0 else 'FAILED'} in {done - t0:.0f}s "
        f"(engine and build {built - t0:.0f}s, tests {done - built:.0f}s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
