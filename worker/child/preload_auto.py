"""Reload mode, in the forkserver: the third-party packages the handler imported (the
parent names them in GPU_WORKER_AUTO_PRELOAD), imported one by one after the preloads.
One that fails is left out with a line saying why: a plain preload that raised anything
but ImportError would end the forkserver."""
import os
import sys

from ..targets import AUTO_PRELOAD_ENV

for _name in filter(None, os.environ.get(AUTO_PRELOAD_ENV, "").split(",")):
    try:
        __import__(_name)
    except BaseException as _exc:     # noqa: B902 - whatever it is, the forkserver goes on
        print(f"gpu-worker: reload: {_name} is not kept in the forkserver: "
              f"{type(_exc).__name__}: {_exc}", file=sys.stderr)
