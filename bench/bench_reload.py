"""The developer's loop, measured: the embeddings example served with --reload, its
handler.py edited for real; from each save to the first /runsync answered by the new
code, against a restart (a new process, from its start to its first answer).

    make bench-reload        # or: .venv/bin/python bench/bench_reload.py [--edits 8]

Each edit adds a revision number to the handler's output and saves the file (a real
write); the client sends /runsync at once and again until an answer carries the new
number, so the time includes the watcher seeing the save, the old child's exit, the new
child's import of the handler (the model's load included) and the request. The first
reload is shown apart: with no WORKER_PRELOAD, it restarts the forkserver once with the
packages the handler imports (`--preload` below sets WORKER_PRELOAD as `make run` does).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

import loopback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_api import end  # noqa: E402
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
MARK = '"model": "all-MiniLM-L6-v2"'
BODY = {"input": {"text": "hello"}}


def start(folder: Path, port: int, reload: bool, preload: bool) -> tuple:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WORKER_LOG_LEVEL": "INFO"}
    env.pop("WORKER_PRELOAD", None)
    if preload:
        env["WORKER_PRELOAD"] = "torch,sentence_transformers"
    args = [PYTHON, "-m", "worker", "serve", "handler.py", "--rp_api_port", str(port)]
    log = open(folder / f"worker-{port}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args + (["--reload"] if reload else []), cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, t0


def first_answer(url: str, want=None, deadline_s: float = 300) -> float:
    """perf_counter() when /runsync first answers COMPLETED (with revision `want`)."""
    s = requests.Session()
    deadline = time.perf_counter() + deadline_s
    while time.perf_counter() < deadline:
        try:
            r = s.post(url + "/runsync", json=BODY, timeout=120).json()
            if r.get("status") == "COMPLETED" and r["output"].get("rev") == want:
                return time.perf_counter()
        except requests.RequestException:
            time.sleep(0.02)
    raise SystemExit(f"no answer with revision {want}")


def broken_and_fixed(handler: Path, original: str, url: str, rev: int) -> None:
    """A save that breaks the import, requests meanwhile (each answered, none hangs), then
    the fix: from its save to the first answer with the fixed code."""
    handler.write_text(original.replace("import torch", "import torch(", 1))
    s = requests.Session()
    deadline = time.perf_counter() + 60
    while True:           # until the broken code is the one being served: 503 with the error
        r = s.post(url + "/runsync", json=BODY, timeout=60)
        if r.status_code == 503:
            break
        assert time.perf_counter() < deadline, r.text
        time.sleep(0.02)
    waits = []
    for _ in range(10):
        t0 = time.perf_counter()
        r = s.post(url + "/runsync", json=BODY, timeout=60)
        waits.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 503 and "SyntaxError" in r.json()["error"], r.text
    handler.write_text(original.replace(MARK, MARK + f', "rev": {rev}'))
    saved = time.perf_counter()
    fixed = (first_answer(url, rev) - saved) * 1000
    print(f"a broken save: 10 requests answered 503 naming the SyntaxError in at most "
          f"{max(waits):.0f} ms each; the fix: save -> answer with the fixed code "
          f"{fixed:.0f} ms (no restart)", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--edits", type=int, default=8)
    p.add_argument("--preload", action="store_true", help="set WORKER_PRELOAD (make run's)")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    for name in ("handler.py", "test_input.json"):
        shutil.copy(ROOT / "examples" / "embeddings" / name, folder / name)
    handler = folder / "handler.py"
    original = handler.read_text()
    print(f"bench_reload: the embeddings example in {folder}; {os.cpu_count()} CPUs; "
          f"WORKER_PRELOAD {'torch,sentence_transformers' if args.preload else 'unset'}",
          flush=True)

    port = 8790
    proc, t0 = start(folder, port, reload=False, preload=args.preload)
    try:
        cold = first_answer(f"http://127.0.0.1:{port}") - t0
    finally:
        end(proc)
    print(f"restart (a new worker, from its start to its first answer): {cold * 1000:.0f} ms",
          flush=True)

    port += 1
    proc, t0 = start(folder, port, reload=True, preload=args.preload)
    url = f"http://127.0.0.1:{port}"
    try:
        first_answer(url)
        times = []
        for rev in range(1, args.edits + 1):
            handler.write_text(original.replace(MARK, MARK + f', "rev": {rev}'))
            saved = time.perf_counter()
            times.append((first_answer(url, rev) - saved) * 1000)
            print(f"edit {rev}: save -> answer with the new code {times[-1]:.0f} ms",
                  flush=True)
        broken_and_fixed(handler, original, url, args.edits + 1)
    finally:
        end(proc)
        handler.write_text(original)
    rest = times[1:]
    print(f"--reload: first save {times[0]:.0f} ms; the {len(rest)} after it: median "
          f"{statistics.median(rest):.0f} ms, min {min(rest):.0f}, max {max(rest):.0f} "
          f"(restart: {cold * 1000:.0f} ms)", flush=True)
    lines = [ln for ln in (folder / f"worker-{port}.log").read_text().splitlines()
             if "reload:" in ln]
    print("the worker's reload lines (last edit):", *lines[-3:], sep="\n  ")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
