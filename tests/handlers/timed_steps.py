"""A handler that times its steps with rp_debugger, as runpod-workers/worker-faster_whisper
does: the same checkpoint names on every job. `ours` in argv: gpu-worker's helpers with
`import worker as runpod`; else the official SDK's."""
import sys

if "ours" in sys.argv[1:]:
    import worker as runpod
    from worker.serverless.utils import rp_debugger
else:
    import runpod
    from runpod.serverless.utils import rp_debugger


@rp_debugger.FunctionTimer
def transcribe(text):
    with rp_debugger.LineTimer("tokenize"):
        words = text.split()
    return len(words)


def handler(job):
    return {"words": transcribe(job["input"]["text"])}


runpod.serverless.start({"handler": handler})
