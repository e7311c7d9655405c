"""RunPodLogger lines at each level, from the SDK (`import runpod`) or ours (`ours`)."""
import sys

if "ours" in sys.argv[1:]:
    import worker as runpod
    from worker import RunPodLogger
else:
    import runpod
    from runpod import RunPodLogger

log = RunPodLogger()


def handler(job):
    log.debug("a debug line", job["id"])
    log.info("an info line", job["id"])
    log.warn("a warn line", job["id"])
    log.error("an error line", job["id"])
    return "logged"


runpod.serverless.start({"handler": handler})
