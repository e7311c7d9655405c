"""Sets settings in its start() dict, one of them by its old name, one misspelt and one
that only the environment can set; importing it leaves a file named by
START_SETTINGS_MARKER (to show `worker config` does not import it)."""
import os

import worker

if os.environ.get("START_SETTINGS_MARKER"):
    open(os.environ["START_SETTINGS_MARKER"], "w").close()


def handler(job):
    return {"pid": os.getpid()}


worker.start({"handler": handler, "refresh_worker": True, "max_vram_mb": 100,
              "job_timout": 3, "run_mode": "api", "my_own_key": 1})
