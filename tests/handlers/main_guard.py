"""worker-vllm's layout: start() inside main() under a __main__ guard, a lambda
concurrency_modifier, and a subprocess main() starts (vLLM's server there, `sleep` here).
Each run of the top level appends a line to $RUNS_FILE."""
import os
import subprocess
import sys

import worker as runpod

with open(os.environ["RUNS_FILE"], "a") as f:
    f.write(f"top {os.getpid()}\n")

server = None


async def handler(job):
    return {"server_pid": server.pid, "worker_pid": os.getpid()}


def main():
    global server
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["RUNS_FILE"], "a") as f:
        f.write(f"main {os.getpid()} server {server.pid}\n")
    runpod.serverless.start({"handler": handler,
                             "concurrency_modifier": lambda current: 8})


if __name__ == "__main__":
    main()
