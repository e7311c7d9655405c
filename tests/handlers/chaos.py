"""A generator handler that misbehaves in the ways issue #5 lists, chosen by input."""
import io
import os
import signal
import subprocess
import sys
import threading
import time

import worker


def handler(job):
    inp = job["input"]
    do = inp.get("do", "ok")
    if do == "ok":
        yield {"pid": os.getpid()}
    elif do == "flood":          # output floods from threads while large chunks stream
        def spam(k):
            for i in range(3000):
                print(f"thread {k} line {i} " + "x" * 80)
        threads = [threading.Thread(target=spam, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for i in range(20):
            yield {"i": i, "blob": "b" * 65536}
        for t in threads:
            t.join()
    elif do == "swallow":        # swallows everything, cancellation included
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except BaseException:
                pass
        yield "survived"
    elif do == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        yield "survived"
    elif do == "orphan":         # starts a subprocess that outlives the job, then refreshes
        child = subprocess.Popen(["sleep", "300"])
        with open(inp["pidfile"], "w") as f:
            f.write(str(child.pid))
        yield {"refresh_worker": True, "orphan": child.pid}
    elif do == "replace_stdout":
        sys.stdout = io.StringIO()
        print("this goes nowhere the worker can see")
        yield "replaced"
    elif do == "kill_child":     # kills every child that runs it
        os._exit(9)


worker.start({"handler": handler})
