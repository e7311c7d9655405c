"""The public API, in one place: start() and progress_update(), as runpod.serverless has
them. Inside a child they are the child runtime's; anywhere else start() hands over to a
parent (the launcher)."""
from __future__ import annotations

import sys
from typing import Any


def start(config: dict) -> None:
    """Serve `config["handler"]`.

    In a gpu-worker child this is where the job loop runs. Anywhere else it hands over to
    a supervisor: a handler script re-executes itself as `python -m worker script.py`, so
    nothing the script loaded stays in the parent.
    """
    from .child import runtime      # here: `import worker` stays light in the parent
    if runtime.current() is not None or runtime.recording():
        runtime.start(config)
        return
    from .parent import start_outside    # the parent's machinery, only when we become one
    start_outside.start_outside_child(config)


def progress_update(job: Any, progress: Any) -> None:
    """Report progress for a running job. It reaches the parent before the job's result."""
    from .child import runtime
    if runtime.current() is not None:
        runtime.progress_update(job, progress)
        return
    job_id = job.get("id") if isinstance(job, dict) else job
    print(f"progress [{job_id}]: {progress}", file=sys.stderr)
