"""Jobs that start processes which leave the child's process group (issue 36): a new
session, a double-forked daemon; they live `live` seconds. Each job returns the pids."""
import os
import subprocess
import sys
import time

import worker

# A daemon: fork, setsid, fork again; the middle one exits at once, so the last one is an
# orphan; it writes its pid where the job reads it.
DAEMON = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode()); os.close(w)
        null = os.open(os.devnull, os.O_RDWR); os.dup2(null, 1); os.dup2(null, 2)
        os.execv(sys.executable, [sys.executable, "-c", f"import time; time.sleep({sys.argv[1]})"])
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), flush=True)
os.wait()
"""


# A process that forks itself anew and exits, for ever: each copy is an orphan in turn.
HOPPER = """
import os, sys
n = 0
while True:
    n += 1
    if os.fork() != 0:
        os._exit(0)
    if n % 100 == 0:
        with open(sys.argv[1], "w") as f:
            f.write(str(n))
"""


def handler(job):
    inp = job["input"]
    live = inp.get("live", 600)
    pids = {}
    if inp.get("hop"):
        subprocess.Popen([sys.executable, "-c", HOPPER, inp["hop"]], start_new_session=True)
    if inp.get("session", True):
        proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({live})"],
                                start_new_session=True)
        pids["session"] = proc.pid
    if inp.get("daemon", True):
        out = subprocess.run([sys.executable, "-c", DAEMON, str(live)], capture_output=True,
                             text=True, check=True)
        pids["daemon"] = int(out.stdout)
    if inp.get("own_exit") is not None:
        # One of its own, waited for late: its exit status is still its own.
        own = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({inp['own_exit']})"])
        time.sleep(inp.get("wait_own", 2.5))
        pids["own_status"] = own.wait()
    time.sleep(inp.get("sleep", 0))
    return {"pids": pids, "child": os.getpid(), "refresh_worker": inp.get("refresh", False)}


worker.start({"handler": handler})
