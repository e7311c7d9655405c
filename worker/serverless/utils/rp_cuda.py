"""`rp_cuda.is_available()`: is there an NVIDIA GPU, without importing torch."""
from __future__ import annotations

import subprocess


def is_available() -> bool:
    """True when `nvidia-smi` runs and reports a driver (the SDK's test, kept so the
    answer is the same on every machine)."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return b"NVIDIA-SMI" in out.stdout
