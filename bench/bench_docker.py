"""What a user of the images sees (`make bench-docker`): each image's size, and for the CPU
image `docker run` → first /health answer → first /runsync answer (the embeddings
example, a real model, set up in the container), then `docker stop` with a job running:
one that ends within the image's grace, and one longer than Docker's default 10 s.
Every container on the host's network, loopback only. The images must be built
(`make docker-build-cpu`, `make docker-build`); `--build` times a build without cache
first (`docker build --no-cache`; the base stays)."""
import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import loopback  # noqa: E402
from docker_tests.containers import MOUNT, Container, docker, unusable  # noqa: E402

TEXT = {"input": {"text": "A cat sits on the mat."}}


def size(image: str) -> str:
    proc = docker("image", "inspect", "-f", "{{.Size}}", image)
    return f"{int(proc.stdout) / 1e9:.2f} GB" if proc.returncode == 0 else "not built"


def timed_build(flavour: str) -> float:
    t0 = time.monotonic()        # the build downloads: outside the loopback guard
    subprocess.run([sys.executable, str(ROOT / "docker" / "build.py"), flavour, "--",
                    "--no-cache"], check=True, env=loopback.outside(os.environ))
    return time.monotonic() - t0


def start_to_answer(image: str) -> tuple[float, float]:
    """Seconds from `docker run` to the first /health answer, and to the first /runsync
    answer (COMPLETED) of the image's own handler."""
    c = Container(image, env={"WORKER_PRELOAD": "torch,sentence_transformers"})
    try:
        health = c.wait_api()
        answer = c.post("/runsync", TEXT, timeout=300).json()
        first = time.monotonic() - c.started
        assert answer["status"] == "COMPLETED", answer
        return health, first
    finally:
        c.remove()


def stop_with_a_job(image: str, seconds: float) -> tuple[float, int, str]:
    """`docker stop` (Docker's default timeout) while a job of `seconds` runs: how long the
    stop took, the exit code, and the job's status as its /runsync client got it."""
    c = Container(image, f"{MOUNT}/handler.py")
    try:
        c.wait_api()
        box = {}
        thread = threading.Thread(target=lambda: box.update(
            a=c.post("/runsync", {"input": {"do": "sleep", "seconds": seconds}})))
        thread.start()
        c.until(lambda: c.health()["jobs"]["inProgress"] == 1, what="the job running")
        took = c.stop()
        thread.join(60)
        return took, c.exit_code(), box["a"].json()["status"]
    finally:
        c.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="gpu-worker:cpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--build", action="store_true", help="time a build without cache first")
    opts = ap.parse_args()
    why = unusable(opts.image)
    if why and not opts.build:
        print(f"bench-docker: {why}", file=sys.stderr)
        return 2
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        if opts.build:
            print(f"build without cache, cpu: {timed_build('cpu'):.0f} s", flush=True)
        for image in ("gpu-worker-base:bookworm", "gpu-worker:cpu", "gpu-worker:gpu"):
            print(f"size {image}: {size(image)}", flush=True)
        runs = [start_to_answer(opts.image) for _ in range(opts.runs)]
        health = statistics.median(h for h, _ in runs)
        first = statistics.median(f for _, f in runs)
        print(f"{opts.image}: docker run -> /health {health:.2f} s, -> first /runsync "
              f"answer {first:.2f} s (median of {opts.runs}; "
              f"{', '.join(f'{f:.2f}' for _, f in runs)})", flush=True)
        for seconds in (3, 60):
            took, code, status = stop_with_a_job(opts.image, seconds)
            print(f"docker stop with a {seconds:g} s job running: {took:.2f} s, exit {code}, "
                  f"the job {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
