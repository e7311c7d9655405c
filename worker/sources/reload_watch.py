"""Which files a reload watches, and the watching (watchfiles, an extra of ours).

The set: the handler's file, every file its children imported from outside site-packages
and the standard library (their Ready/SetupFailed say which), and WORKER_RELOAD_INCLUDE's
paths and patterns; never WORKER_RELOAD_EXCLUDE's, nor what watchfiles' default filter
drops (.git, __pycache__, virtual environments, node_modules, editor swap files). Files
the handler writes while it runs are in none of these, so they reload nothing. Events are
coalesced (a save that writes three times is one reload). On file systems that send no
events (NFS, SMB, 9p/virtiofs shares of a container or VM) it polls.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import threading
from typing import Callable, Iterable

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "fuse.sshfs",
              "fuse.rclone", "ceph", "glusterfs", "vboxsf", "fuse.grpcfuse", "fakeowner")
TICK_MS = 500                     # how often a watch wakes to see if its set has changed


class MissingWatcher(RuntimeError):
    """watchfiles is not installed: the message says how to get it."""


def load_watchfiles():
    try:
        import watchfiles
        logging.getLogger("watchfiles").setLevel(logging.WARNING)   # our lines say it
    except ImportError:
        raise MissingWatcher("--reload and --watch need watchfiles: pip install "
                             "'gpu-worker[reload]' (or pip install watchfiles)") from None
    return watchfiles


class WatchSet:
    def __init__(self, handler_path: str, include: Iterable[str], exclude: Iterable[str]):
        self.base = os.path.dirname(os.path.realpath(handler_path))
        self.files = {os.path.realpath(handler_path)}
        self.include_paths, self.include_globs = set(), []
        for item in include:
            if any(c in item for c in "*?["):
                self.include_globs.append(item)
            else:
                self.include_paths.add(os.path.realpath(os.path.join(self.base, item)))
        self.exclude = list(exclude)
        self.version = 0

    def add(self, files: Iterable[str]) -> None:
        new = {os.path.realpath(f) for f in files} - self.files
        if new:
            self.files |= new
            self.version += 1

    def roots(self) -> list:
        """Folders to watch: each code file's folder and the included paths, none inside
        another."""
        dirs = {os.path.dirname(f) for f in self.files} | {self.base}
        dirs |= {p if os.path.isdir(p) else os.path.dirname(p) for p in self.include_paths}
        dirs = sorted(d for d in dirs if os.path.isdir(d))
        out: list = []
        for d in dirs:
            if not any(d == o or d.startswith(o.rstrip(os.sep) + os.sep) for o in out):
                out.append(d)
        return out

    def relevant(self, path: str) -> bool:
        path = os.path.realpath(path)
        rel = os.path.relpath(path, self.base)
        if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(path, g) for g in self.exclude):
            return False
        if path in self.files:
            return True
        if any(path == p or path.startswith(p.rstrip(os.sep) + os.sep)
               for p in self.include_paths):
            return True
        return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(os.path.basename(path), g)
                   for g in self.include_globs)


def needs_polling(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when `path` is on a file system that sends no change events."""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            mounts = [line.split(" - ") for line in f if " - " in line]
    except OSError:
        return False
    path = os.path.realpath(path)
    best, fstype = "", ""
    for head, tail in mounts:
        point = head.split()[4].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, fstype = point, tail.split()[0]
    return fstype in NETWORK_FS


def watch(files: WatchSet, on_change: Callable[[list], None], stop: threading.Event,
          poll: str = "auto") -> None:
    """Call on_change(paths) after each coalesced batch of relevant changes, until `stop`;
    the watch is made again whenever the set of files grows."""
    watchfiles = load_watchfiles()
    default = watchfiles.DefaultFilter()
    force = {"on": True, "off": False}.get(poll, needs_polling(files.base))
    while not stop.is_set():
        version = files.version
        roots = files.roots()

        def keep(change, path: str) -> bool:
            return default(change, path) and files.relevant(path)
        for changes in watchfiles.watch(*roots, watch_filter=keep, stop_event=stop,
                                        force_polling=force, step=50, debounce=400,
                                        rust_timeout=TICK_MS, yield_on_timeout=True,
                                        raise_interrupt=False):
            if changes:
                on_change(sorted({path for _, path in changes}))
            if files.version != version or stop.is_set():
                break
