"""The embeddings example's one-shot local test, as a user runs it: `python handler.py`
(reads ./test_input.json, runs one job, exits), against runpod-python 1.12 running the
same file with `import runpod` instead of `import worker as runpod`.

    .venv/bin/python bench/bench_oneshot.py [--rounds N] [--example DIR]

An older tree: `cd /tmp && PYTHONPATH=<checkout> /work/main/.venv/bin/python
/work/main/bench/bench_oneshot.py --example <checkout>/examples/embeddings` (the first line
printed says which `worker` package the runs import).

Cases run alternately, each in a fresh process; the wall time is from the command's start
to its exit. Prints the median of each and the ratio to runpod-python.
"""
import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loopback

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embeddings"


IMPORT = re.compile(r"^import worker as runpod.*$", re.M)


def prepare(tmp: Path, example: Path) -> dict:
    source = (example / "handler.py").read_text()
    assert IMPORT.search(source), "the example does not `import worker as runpod`"
    shutil.copy(example / "test_input.json", tmp / "test_input.json")
    (tmp / "ours.py").write_text(source)
    (tmp / "sdk.py").write_text(IMPORT.sub("import runpod", source))
    py = sys.executable
    cases = {"runpod-python 1.12: python handler.py": [py, "sdk.py"],
             "gpu-worker: python handler.py": [py, "ours.py"],
             "gpu-worker: python -m worker handler.py": [py, "-m", "worker", "ours.py"]}
    torch_line = "import torch  # noqa: E402\n"
    if source.index("import worker as runpod") < source.find(torch_line):
        # the same handler with `import worker` after torch: what a late import costs
        late = IMPORT.sub("", source, count=1).replace(
            torch_line, torch_line + "\nimport worker as runpod\n")
        (tmp / "late.py").write_text(late)
        cases["gpu-worker: python handler.py, import worker after torch"] = [py, "late.py"]
    return cases


def once(cmd: list, cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or not ("'dimensions': 384" in out or '"dimensions": 384' in out):
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{out[-3000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--example", type=Path, default=EXAMPLE)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = subprocess.run([sys.executable, "-c", "import os, worker; "
                                "print(os.path.dirname(worker.__file__))"], cwd=tmp,
                               capture_output=True, text=True).stdout.strip()
        print(f"worker from: {where}")
        cases = prepare(Path(tmp), args.example.resolve())
        times = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, cmd in cases.items():
                times[name].append(once(cmd, Path(tmp)))
    base = statistics.median(times["runpod-python 1.12: python handler.py"])
    print(f"one-shot of the embeddings example, median of {args.rounds} (seconds, ratio to "
          "runpod-python):")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:58s} {med:6.2f} s  {med / base:4.2f}x   "
              f"({' '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        main()
