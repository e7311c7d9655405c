"""The public API: start() and progress_update(), as runpod.serverless has them."""
from __future__ import annotations

import sys
from typing import Any

from . import runner


def start(config: dict) -> None:
    """Serve `config["handler"]`.

    In a gpu-worker child this is where the job loop runs. Anywhere else it hands over to
    a supervisor: a handler script re-executes itself as `python -m worker script.py`, so
    nothing the script loaded stays in the parent.
    """
    rt = runner.current()
    if rt is not None:
        rt.serve(config)
        return
    from . import launch
    launch.start_outside_child(config)


def progress_update(job: Any, progress: Any) -> None:
    """Report progress for a running job. It reaches the parent before the job's result."""
    rt = runner.current()
    if rt is not None:
        rt.progress(job, progress)
        return
    job_id = job.get("id") if isinstance(job, dict) else job
    print(f"progress [{job_id}]: {progress}", file=sys.stderr)
