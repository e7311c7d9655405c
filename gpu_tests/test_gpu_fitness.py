"""The built-in GPU fitness check on a real GPU: the driver API path through ctypes, in a
process of its own (the check creates and releases a CUDA context), and a worker whose
first child passes it before Ready."""
import subprocess
import sys

from tests.support import HANDLERS, PYTHON, run_cli


def test_the_driver_api_check_passes_on_this_gpu():
    code = ("from worker.child import gpu_check; n = gpu_check.expected(); assert n > 0, n; "
            "print(gpu_check.check())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "passed the CUDA check" in proc.stdout


def test_a_worker_runs_the_check_before_its_first_job():
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "misbehave.py"),
                    "--test_input", '{"input": {"do": "ok"}}'],
                   env={"WORKER_CHECKS": "require_gpu"})
    assert proc.returncode == 0, proc.stderr
    assert "passed the CUDA check" in proc.stderr
    assert "torch is built for CUDA" not in proc.stderr      # no driver/torch mismatch


def test_hidden_gpus_fail_a_worker_that_requires_one():
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "misbehave.py"),
                    "--test_input", '{"input": {"do": "ok"}}'],
                   env={"WORKER_CHECKS": "require_gpu", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1
    assert "WORKER_CHECKS=require_gpu but no GPU is visible" in proc.stderr
