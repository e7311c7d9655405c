"""`--watch`: the one-shot test, run again on every save of the handler's code (and of
test_input.json). A save that lands while a run is going stops that run and starts
again on the new code; a save that breaks the import shows the error once and waits for
the next one."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from ..config import Settings
from ..jobs import JobError
from ..version import __version__
from . import oneshot, reload_watch
from .host import SourceHost
from .reloader import code_path, short

SHOW_LIMIT_S = 30.0         # a stopped run's end is waited for this long at most


def run(settings: Settings, target, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    files = reload_watch.WatchSet(code_path(target), settings.reload_include,
                                  settings.reload_exclude)
    if settings.test_input is None:
        files.include_paths.add(os.path.realpath(oneshot.TEST_INPUT_FILE))
    saved = threading.Event()
    changed: list = []
    stop = threading.Event()

    def on_change(paths: list) -> None:
        changed[:] = paths
        saved.set()
    host = SourceHost(settings, target, one_child=True)
    sup = host.sup
    host.handle_signals(lambda name: (stop.set(), saved.set()), "watching ends")
    threading.Thread(target=reload_watch.watch, args=(files, on_change, stop,
                                                      settings.reload_poll),
                     name="gpu-worker-watch", daemon=True).start()
    print(f"--- gpu-worker {__version__} | one-shot test of {target.describe()}, again on "
          f"every save (Ctrl-C to stop) ---", file=out, flush=True)
    host.start()
    runs = 0
    try:
        while not stop.is_set():
            runs += 1
            saved.clear()
            _one_run(sup, settings, runs, saved, stop, out)
            for child in sup.status.children:
                if child.code:
                    files.add(child.code[0])
            if not saved.is_set() and not stop.is_set():
                print(f"--- watching {len(files.files)} file(s); save to run again ---",
                      file=out, flush=True)
                saved.wait()
            if stop.is_set():
                break
            print(f"--- {short(changed, files.base)} changed: running again on the new code "
                  "---", file=out, flush=True)
            sup.refresh(f"watch: {short(changed, files.base)} changed")
    finally:
        stop.set()
        host.stop()
    return 0


def _one_run(sup, settings: Settings, n: int, saved: threading.Event,
             stop: threading.Event, out: TextIO) -> None:
    try:
        job = oneshot.load_job(settings.test_input)
    except JobError as exc:
        print(f"worker: error: {exc}", file=out, flush=True)
        return
    job["id"] = f"{job['id']}-{n}"
    printer = oneshot._Printer(out, sup)
    print(f"--- run {n}: job {job['id']} ---", file=out, flush=True)
    t0 = time.monotonic()
    sup.submit(job, printer)
    while not printer.done.wait(0.05):
        if saved.is_set() or stop.is_set():
            print(f"--- run {n} stopped: {'a save came' if saved.is_set() else 'Ctrl-C'} ---",
                  file=out, flush=True)
            sup.cancel(job["id"])
            printer.done.wait(SHOW_LIMIT_S)
            return
    oneshot._show_result(printer.result, out)
    print(f"--- run {n}: {printer.result.state.value} in "
          f"{(time.monotonic() - t0) * 1000:.0f} ms (from the request to the result) ---",
          file=out, flush=True)
