"""Reload mode, in the child: imports that never read stale bytecode, and the code the
handler runs — the files the parent watches and the third-party packages it may keep
loaded in the forkserver."""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import site
import sys
import sysconfig
import traceback

MAX_FILES = 2000
_BEFORE: set = set()      # the modules the child had before the handler's code ran


class _SourceOnly(importlib.machinery.SourceFileLoader):
    """The handler's own modules compile from their source on every import: no .pyc is
    read (two saves in one second, same size, same mtime, would pass its check) or
    written."""

    def get_code(self, fullname):
        return self.source_to_code(self.get_data(self.path), self.path)

    def set_data(self, path, data, *, _mode=0o666):
        pass


def fresh_imports() -> None:
    """Reload mode: modules outside site-packages and the standard library load through
    _SourceOnly (installed packages keep their bytecode: compiling torch from source on
    every reload would cost seconds). Directory listings cached before the fork are
    dropped, so a file created since is found."""
    global _BEFORE
    _BEFORE = set(sys.modules)
    roots = _roots()
    machinery = importlib.machinery
    loaders = ((_SourceOnly, machinery.SOURCE_SUFFIXES),
               (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
               (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES))

    def hook(path: str):
        real = os.path.realpath(path or os.getcwd())
        if not os.path.isdir(real) or _kind(real + os.sep, roots) != "code":
            raise ImportError("not the handler's code")     # the next hook takes it
        return machinery.FileFinder(path, *loaders)
    sys.path_hooks.insert(0, hook)
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _roots() -> tuple:
    paths = sysconfig.get_paths()
    stdlib = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")}
    third = {os.path.realpath(paths[k]) for k in ("purelib", "platlib")}
    try:
        third |= {os.path.realpath(p) for p in site.getsitepackages()}
        third.add(os.path.realpath(site.getusersitepackages()))
    except AttributeError:          # a virtualenv's old site module
        pass
    ours = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))   # worker/
    return tuple(p + os.sep for p in third), tuple(p + os.sep for p in stdlib), ours + os.sep


def _kind(path: str, roots: tuple) -> str:
    third, stdlib, ours = roots
    if path.startswith(ours):
        return "ours"
    if path.startswith(third):
        return "third"
    if path.startswith(stdlib):
        return "stdlib"
    return "code"


def report(exc: BaseException | None = None) -> dict:
    """{"files": the handler's code (every imported module's file outside site-packages,
    the standard library and this package; with `exc`, the files its traceback passes
    through, the syntax error's own included), "packages": third-party packages those
    files import directly}."""
    roots = _roots()
    files = set()
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if isinstance(path, str):
            path = os.path.realpath(path)
            if _kind(path, roots) == "code" and os.path.isfile(path):
                files.add(path)
    if exc is not None:
        seen = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
        if isinstance(exc, SyntaxError) and exc.filename:
            seen.append(exc.filename)
        for name in seen:
            path = os.path.realpath(name)
            if _kind(path, roots) == "code" and os.path.isfile(path):
                files.add(path)
    return {"files": sorted(files)[:MAX_FILES], "packages": _third_party(roots)}


def _third_party(roots: tuple) -> list:
    """The installed top-level packages the handler's code imported, directly or not
    (a model loader's lazy imports included), in the order they were imported."""
    found = []
    for name, mod in list(sys.modules.items()):
        if "." in name or name.startswith("_") or name in _BEFORE:
            continue
        path = getattr(mod, "__file__", None)
        if isinstance(path, str) and _kind(os.path.realpath(path), roots) == "third":
            found.append(name)
    return found
