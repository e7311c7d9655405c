"""--reload: on every save of the handler's code, the child is replaced by one running the
new code — after its running jobs end, as a refresh does, with queued jobs kept; a request
that comes after the change was seen waits for the new code. A save that breaks the
import leaves the worker answering 503 with the error until a save fixes it.

Heavy third-party imports stay in the forkserver: WORKER_PRELOAD's, or, when it is empty,
the packages the handler's files import directly (the first reload restarts the forkserver
once with them; its preload checks keep CUDA out of it). Warm refresh and the spare child
are off in this mode: both would hold the old code.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time

from ..parent.supervisor import Supervisor, WorkerState
from ..targets import ModuleTarget, ScriptTarget
from . import reload_watch

log = logging.getLogger("worker.reload")
KEEP_OUT_OF_FORKSERVER = {"worker", "runpod"}     # ours, and the SDK (preloads.implied)


def code_path(target) -> str | None:
    """The file a reload starts from: the script, or the module's file (found, not
    imported)."""
    if isinstance(target, ScriptTarget):
        path = target.path
        return os.path.join(path, "__main__.py") if os.path.isdir(path) else path
    if isinstance(target, ModuleTarget):
        try:
            spec = importlib.util.find_spec(target.name)
        except (ImportError, ValueError):
            return None
        return spec.origin if spec is not None and spec.origin else None
    return None


def short(paths: list, base: str) -> str:
    names = [os.path.relpath(p, base) if p.startswith(base) else p for p in paths[:3]]
    return ", ".join(names) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


class Reloader:
    def __init__(self, sup: Supervisor, path: str, settings):
        self.sup, self.settings = sup, settings
        self.files = reload_watch.WatchSet(path, settings.reload_include,
                                           settings.reload_exclude)
        self.stop_event = threading.Event()
        self.generation = 0
        self.reloads = 0
        self.last: dict | None = None
        self._preload_chosen = bool(settings.preload)
        self._lock = threading.Lock()

    def start(self) -> None:
        reload_watch.load_watchfiles()
        for fn, name in ((self._watch, "watch"), (self._learn, "learn")):
            threading.Thread(target=fn, name=f"gpu-worker-reload-{name}", daemon=True).start()

    def stop(self) -> None:
        self.stop_event.set()

    def view(self) -> dict:
        """For /health."""
        with self._lock:
            return {"watching": len(self.files.files), "reloads": self.reloads,
                    "last": dict(self.last) if self.last else None}

    # --- what to watch ---------------------------------------------------------------------

    def learn(self, status) -> None:
        """Add the files the children ran; pick the forkserver's preloads once."""
        for child in status.children:
            if child.code:
                files, packages = child.code
                self.files.add(files)
                self._keep_loaded(packages)

    def _learn(self) -> None:
        seen = None
        while not self.stop_event.is_set():
            self.sup.wait_until(lambda s: _code(s) != seen, 0.5)
            status = self.sup.status
            seen = _code(status)
            self.learn(status)

    def _keep_loaded(self, packages) -> None:
        launcher = self.sup.launcher
        if self._preload_chosen or not packages or \
                getattr(launcher, "method", "") != "forkserver":
            return
        extra = [p for p in packages if p not in KEEP_OUT_OF_FORKSERVER
                 and p not in launcher.preload]
        self._preload_chosen = True
        if extra:
            launcher.guarded = extra
            log.info("reload: the forkserver keeps %s imported for the next children (the "
                     "first reload restarts it once; set WORKER_PRELOAD to choose)",
                     ", ".join(extra[:8]) + (f" and {len(extra) - 8} more"
                                             if len(extra) > 8 else ""))

    # --- reacting --------------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            reload_watch.watch(self.files, self.changed, self.stop_event,
                               self.settings.reload_poll)
        except Exception:     # noqa: BLE001 - the worker serves on without reloads
            log.exception("reload: watching the handler's files failed; no more reloads")

    def changed(self, paths: list) -> None:
        status = self.sup.status
        self.learn(status)
        t0 = saved_at(paths)
        with self._lock:
            self.generation += 1
            self.reloads += 1
            gen = self.generation
            what = short(paths, self.files.base)
            self.last = {"changed": what, "ready_ms": None, "first_job_ms": None,
                         "error": None}
        broken = status.state is WorkerState.SETUP_FAILED
        log.info("reload: %s changed; %s", what, "trying the new code" if broken else
                 "the child is replaced once its running jobs end (requests wait for the "
                 "new code)")
        old = {c.pid for c in status.children if c.pid}
        self.sup.refresh(f"reload: {what} changed")
        threading.Thread(target=self._report, args=(gen, t0, old), daemon=True,
                         name="gpu-worker-reload-report").start()

    def _report(self, gen: int, t0: float, old: set) -> None:
        """One line when the new code is ready (or failed), one for its first job."""
        bound = self.settings.setup_timeout + 60

        def settled(s) -> bool:
            return gen != self.generation or s.state is not WorkerState.RUNNING or any(
                c.ready and c.pid not in old for c in s.children)
        self.sup.wait_until(settled, bound)
        status = self.sup.status
        if gen != self.generation or self.stop_event.is_set():
            return
        if status.state is WorkerState.SETUP_FAILED:
            with self._lock:
                self.last["error"] = status.failure
            log.error("reload: the new code does not set up (the error is above); requests "
                      "get 503 with it until a save fixes it")
            return
        if status.state is not WorkerState.RUNNING:
            return
        ready_ms = (time.monotonic() - t0) * 1000
        done = status.finished
        with self._lock:
            self.last["ready_ms"] = round(ready_ms)
        log.info("reload: the new code is ready %d ms after the save", ready_ms)
        self.sup.wait_until(lambda s: gen != self.generation or s.finished > done
                            or self.stop_event.is_set(), None)
        if gen == self.generation and not self.stop_event.is_set():
            first_ms = (time.monotonic() - t0) * 1000
            with self._lock:
                self.last["first_job_ms"] = round(first_ms)
            log.info("reload: the first job on the new code ended %d ms after the save",
                     first_ms)


def saved_at(paths: list) -> float:
    """When the save happened, on the monotonic clock: the newest mtime of the changed
    files (a deleted one: now), so the times said are from the save, not from when the
    watcher saw it."""
    now_wall, now = time.time(), time.monotonic()
    stamps = []
    for path in paths:
        try:
            stamps.append(os.stat(path).st_mtime)
        except OSError:
            pass
    newest = max(stamps, default=now_wall)
    return now - max(0.0, min(now_wall - newest, 5.0))


def _code(status) -> tuple:
    return tuple(c.code for c in status.children)
