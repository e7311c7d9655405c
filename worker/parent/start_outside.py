"""start() outside a child: become the supervisor without keeping the script's memory."""
from __future__ import annotations

import sys

from .. import handover
from ..targets import ModuleTarget, ValueTarget


def start_outside_child(config: dict) -> None:
    if not isinstance(config, dict) or not callable(config.get("handler")):
        raise TypeError("start() needs a dict with a callable 'handler', "
                        "e.g. start({'handler': handler})")
    script = handover.running_script()
    if script is not None:
        # `import worker` came too late to hand over before the script ran (it sits in a
        # function, e.g. main()). Re-run the whole script in the worker, so main() and
        # whatever it sets up belong to the child (reexec ends what this run started).
        print("gpu-worker: the script ran before handing over to the worker (put "
              "`import worker` at the top of the script, or run `python -m worker "
              f"{sys.argv[0]}`); it runs again in the worker process", file=sys.stderr)
        handover.reexec(script, sys.argv[1:])

    from . import cli
    module_name = getattr(config["handler"], "__module__", None)
    if module_name in (None, "__main__"):
        target = ValueTarget(dict(config))   # a REPL or notebook handler crosses by value
    else:
        target = ModuleTarget(module_name, sys.argv[1:])
    sys.exit(cli.run(target, sys.argv[1:], config))

