"""`import worker` inside main(), after main() has started a subprocess (worker-vllm's
own order, with `import runpod` replaced): the handover can only happen at start()."""
import os
import subprocess
import sys

with open(os.environ["RUNS_FILE"], "a") as f:
    f.write(f"top {os.getpid()}\n")


def handler(job):
    return {"server_pid": SERVER.pid}


def main():
    global SERVER
    SERVER = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["RUNS_FILE"], "a") as f:
        f.write(f"main {os.getpid()} server {SERVER.pid}\n")
    import worker as runpod
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
