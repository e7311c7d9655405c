"""For the load-balancing mode: setup waits until $GO_FILE exists (so /ping is seen at
204); the second setup fails (a refresh into a broken setup: /ping goes 503). A job can
hold until the file it names exists, and can ask for a refresh."""
import os
import time

import worker as runpod

MARK = os.environ["GO_FILE"] + ".setup-done"
if os.path.exists(MARK):
    raise RuntimeError("the model volume is gone")     # the second child's setup
while not os.path.exists(os.environ["GO_FILE"]):
    time.sleep(0.02)
open(MARK, "w").close()


def handler(job):
    hold = job["input"].get("hold")
    while hold and not os.path.exists(hold):
        time.sleep(0.02)
    if job["input"].get("refresh"):
        return {"refresh_worker": True, "done": True}
    return {"done": True}


runpod.serverless.start({"handler": handler})
