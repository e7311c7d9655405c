"""A start() dict with a value no setting takes: a setup failure in one line."""
import worker

worker.start({"handler": lambda job: job["input"], "job_timeout": -5})
