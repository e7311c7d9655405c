"""A handler whose set-up fails, as one whose model file is missing would: the worker
cannot run jobs, and the image's HEALTHCHECK must say so."""
import worker as runpod

raise RuntimeError("model weights not found at /models/missing.safetensors")

runpod.serverless.start({"handler": lambda job: job["input"]})   # never reached
