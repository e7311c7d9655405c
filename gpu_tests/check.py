"""`make gpu-check` (through gpu_tests/check.sh): every check that needs a GPU, one summary
line each, on a machine with no network. Each check runs in a subprocess with its own time
limit, so one that hangs cannot take the others with it; a check that cannot run here is
skipped with the reason. Exit 1 if any check failed.

    CHECK <name>: PASS|FAIL|SKIP  <detail>

This process never imports torch (it is the parent, as in production).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BUDGET_S = 450          # check.sh kills everything at 470 s; the whole must end before
DEADLINE = time.monotonic() + BUDGET_S
results: list = []


def report(name: str, outcome: str, detail: str) -> str:
    results.append((name, outcome))
    print(f"CHECK {name}: {outcome}  {detail}", flush=True)
    return outcome


def run(code_or_args, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [PY, "-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    timeout = max(5.0, min(timeout, DEADLINE - time.monotonic()))
    try:
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return subprocess.CompletedProcess(args, 124, out, f"timed out after {timeout:.0f} s")


def keep_log(name: str, proc: subprocess.CompletedProcess) -> None:
    """The whole output of a check, for the one who has to find out why it failed."""
    folder = os.environ.get("GPU_CHECK_LOGS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"{name}.log").write_text(f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")


def pytest_check(name: str, args: list, timeout: float) -> tuple:
    """Run pytest; print each FAILED/ERROR/SKIPPED line and, for failures, the first lines
    of each assertion (pytest's "E " lines), so one run on a GPU says what went wrong."""
    proc = run([PY, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *args], timeout)
    keep_log(name, proc)
    text = proc.stdout + proc.stderr
    for line in text.splitlines():
        if line.startswith(("SKIPPED", "FAILED", "ERROR")):
            print(f"    {line[:300]}", flush=True)
    errors = [line for line in text.splitlines() if line.startswith(("E ", "_____"))]
    if proc.returncode not in (0, 5):
        for line in errors[:60]:
            print(f"    | {line[:240]}", flush=True)
    return proc, last_line(proc.stdout) or last_line(proc.stderr)


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


def check_nvml() -> str:
    code = ("import pynvml as n; n.nvmlInit(); c = n.nvmlDeviceGetCount(); "
            "h = [n.nvmlDeviceGetHandleByIndex(i) for i in range(c)]; "
            "print(c, '|', '; '.join(f'{n.nvmlDeviceGetName(x)} "
            "{n.nvmlDeviceGetMemoryInfo(x).total >> 20} MiB' for x in h), '| driver', "
            "n.nvmlSystemGetDriverVersion(), '| CUDA', n.nvmlSystemGetCudaDriverVersion())")
    proc = run(code, 60)
    if proc.returncode != 0:
        return report("nvml", "SKIP", f"no NVIDIA driver here: {last_line(proc.stderr)}")
    count = int(proc.stdout.split("|")[0])
    if count == 0:
        return report("nvml", "SKIP", "NVML works but sees no GPU")
    return report("nvml", "PASS", proc.stdout.strip())


def check_libcuda(nvml: str) -> str:
    if nvml != "PASS":
        return report("libcuda", "SKIP", "no GPU (see nvml)")
    proc = run("from worker.child import gpu_check as g; print(g.check(), '| driver CUDA',"
               " g.driver_cuda())", 120)
    if proc.returncode != 0:
        return report("libcuda", "FAIL", last_line(proc.stderr))
    return report("libcuda", "PASS", proc.stdout.strip())


def check_torch(nvml: str) -> str:
    proc = run("import torch; print(torch.__version__, torch.version.cuda or '')", 120)
    if proc.returncode != 0:
        return report("torch-cuda", "SKIP", "torch is not installed for this Python")
    version, _, cuda = proc.stdout.strip().partition(" ")
    if not cuda:
        return report("torch-cuda", "SKIP", f"torch {version} is a CPU build")
    if nvml != "PASS":
        return report("torch-cuda", "SKIP", f"torch {version} (CUDA {cuda}) but no GPU")
    mismatch = run("from worker.child import gpu_check as g; print(g.torch_mismatch() or '')",
                   60).stdout.strip()
    proc = run("import torch; assert torch.cuda.is_available(), 'is_available() is False'; "
               "x = torch.randn(2048, 2048, device='cuda'); "
               "print(torch.cuda.get_device_name(0), float((x @ x).abs().sum()) > 0)", 180)
    if proc.returncode != 0:
        return report("torch-cuda", "FAIL", f"torch {version} (CUDA {cuda}): "
                      f"{mismatch or last_line(proc.stderr)}")
    return report("torch-cuda", "PASS", f"torch {version} (CUDA {cuda}) on "
                  f"{proc.stdout.strip()}")


def check_fitness(nvml: str) -> str:
    """The worker's own start on this GPU: the built-in check, WORKER_CHECKS=require_gpu."""
    if nvml != "PASS":
        return report("worker-fitness", "SKIP", "no GPU (see nvml)")
    proc = run([PY, "-m", "worker", str(ROOT / "tests" / "handlers" / "misbehave.py"),
                "--test_input", '{"input": {"do": "ok"}}'], 180,
               env={"WORKER_CHECKS": "require_gpu"})
    found = re.search(r"\d+ GPU\(s\) passed the CUDA check", proc.stderr)
    if proc.returncode != 0 or not found:
        return report("worker-fitness", "FAIL", f"exit {proc.returncode}: "
                      f"{last_line(proc.stderr)}")
    return report("worker-fitness", "PASS", f"{found.group(0)}; the job ran")


def check_gpu_tests() -> str:
    proc, summary = pytest_check("gpu_tests", ["gpu_tests"], 270)
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    if proc.returncode == 0 and passed:
        return report("gpu_tests", "PASS", summary)
    if proc.returncode == 0:
        return report("gpu_tests", "SKIP", f"{summary} (reasons above)")
    if proc.returncode == 124:
        print(proc.stdout[-3000:], flush=True)
    return report("gpu_tests", "FAIL", summary)


# The CPU suite's tests whose path depends on whether a GPU is there: on a GPU machine they
# must pass (or skip for a stated reason), whichever torch it has.
GPU_SENSITIVE = ["tests/test_gpu_monitor.py", "tests/test_gpu_policies.py",
                 "tests/test_docker.py::test_the_gpu_image_asks_for_the_gpu_and_fails_without_one",
                 "tests/test_docker.py::test_healthcheck_reads_the_health_file_in_load_balancing_mode",
                 "tests/test_dropin.py::test_the_gpu_check_expects_no_gpu_here_and_none_when_hidden"]


def check_cpu_suite_here() -> str:
    proc, summary = pytest_check("cpu-suite-gpu-paths", GPU_SENSITIVE, 120)
    if proc.returncode != 0:
        return report("cpu-suite-gpu-paths", "FAIL", summary)
    return report("cpu-suite-gpu-paths", "PASS", summary)


def check_bench(torch_cuda: str) -> str:
    if torch_cuda != "PASS":
        return report("gpu-bench", "SKIP", "needs a GPU and a CUDA build of torch "
                                           "(see torch-cuda)")
    proc = run([PY, "bench/bench_gpu.py", "--refreshes", "5"], 220)
    keep_log("gpu-bench", proc)
    for line in proc.stdout.splitlines():
        if line.startswith(("ROW", "GPU:")):
            print(f"    {line}", flush=True)
    if proc.returncode != 0:
        return report("gpu-bench", "FAIL", last_line(proc.stderr) or "a row is wrong (above)")
    return report("gpu-bench", "PASS", "rows above (docs/benchmarks.md, GPU section)")


def main() -> int:
    started = time.monotonic()
    print(f"gpu-check: {PY} (Python {sys.version.split()[0]}), repository {ROOT}", flush=True)
    nvml = check_nvml()
    check_libcuda(nvml)
    torch_cuda = check_torch(nvml)
    check_fitness(nvml)
    check_gpu_tests()
    check_cpu_suite_here()
    check_bench(torch_cuda)
    counts = {k: sum(1 for _, o in results if o == k) for k in ("PASS", "FAIL", "SKIP")}
    print(f"gpu-check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} "
          f"skipped in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
