"""start() outside a child: become the supervisor without keeping the script's memory."""
from __future__ import annotations

import os
import subprocess
import sys

from ..targets import ModuleTarget, ValueTarget


def start_outside_child(config: dict) -> None:
    if not isinstance(config, dict) or not callable(config.get("handler")):
        raise TypeError("start() needs a dict with a callable 'handler', "
                        "e.g. start({'handler': handler})")
    module_name = getattr(config["handler"], "__module__", None)
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if (module_name == "__main__" and main_file and sys.argv and sys.argv[0]
            and os.path.realpath(sys.argv[0]) == os.path.realpath(main_file)):
        _reexec(os.path.realpath(main_file), sys.argv[1:])

    from . import cli
    if module_name in (None, "__main__"):
        target = ValueTarget(dict(config))   # a REPL or notebook handler crosses by value
    else:
        target = ModuleTarget(module_name, sys.argv[1:])
    sys.exit(cli.run(target, sys.argv[1:], config))


def _reexec(script: str, args: list) -> None:
    """`python handler.py` → `python -m worker handler.py`: exec replaces this process, so
    whatever the script loaded before start() is released; the child loads it again."""
    argv = [sys.executable, *subprocess._args_from_interpreter_flags(), "-m", "worker",
            script, *args]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.execv(sys.executable, argv)
