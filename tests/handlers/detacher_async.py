"""An async handler whose jobs start processes that leave the child's group (issue 36);
the child lives on when a job is cancelled. A process started at import serves every job
and must live on."""
import asyncio
import os
import subprocess
import sys

import worker

SERVER = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                          start_new_session=True)
DAEMON = open(os.path.join(os.path.dirname(__file__), "detacher.py")).read().split(
    'DAEMON = """', 1)[1].split('"""', 1)[0]


async def handler(job):
    inp = job["input"]
    live = inp.get("live", 600)
    session = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"import time; time.sleep({live})", start_new_session=True)
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DAEMON, str(live), stdout=asyncio.subprocess.PIPE)
    pid = int((await daemon.stdout.readline()).decode())
    await daemon.wait()
    pids = {"session": session.pid, "daemon": pid, "server": SERVER.pid, "child": os.getpid()}
    print("pids", pids, flush=True)
    await asyncio.sleep(inp.get("sleep", 0))
    return pids


worker.start({"handler": handler})
