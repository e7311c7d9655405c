"""A generator handler: each yield is a stream chunk; with return_aggregate_stream the
final output is the list of chunks."""
import worker as runpod


def generator_handler(job):
    for count in range(job["input"].get("count", 3)):
        yield f"This is the {count} generated output."


runpod.serverless.start({"handler": generator_handler, "return_aggregate_stream": True})
