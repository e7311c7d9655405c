import worker

raise RuntimeError("model weights missing")

worker.start({"handler": lambda job: "never"})
