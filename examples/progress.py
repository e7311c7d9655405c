"""Progress updates: each reaches the caller before the final result."""
import worker as runpod


def handler(job):
    for update_number in range(0, 3):
        runpod.serverless.progress_update(job, f"Update {update_number}/3")
    return "done"


runpod.serverless.start({"handler": handler})
