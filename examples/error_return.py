"""Error handling: return {"error": ...} for a graceful failure (the job ends FAILED)."""
import worker as runpod


def handler(job):
    job_input = job["input"]
    if not job_input.get("seed", False):
        return {"error": "Input is missing the 'seed' key. Please include a seed."}
    return "Input validation successful."


runpod.serverless.start({"handler": handler})
