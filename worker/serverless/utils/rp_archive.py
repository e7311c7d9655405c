"""Extracting a downloaded zip within the download's limits.

The size cap (RUNPOD_MAX_DOWNLOAD_BYTES) bounds what is fetched; a zip of a few hundred
KiB can inflate to gigabytes. So extraction is bounded too, by what it writes, not by
what the archive's headers claim: at most MAX_ENTRIES entries, at most the cap in all,
and no entry that inflates more than MAX_RATIO times its compressed size. Entry names are
kept inside the folder (zipfile drops absolute paths and `..`; no symlink is ever made).
On any refusal the partly extracted folder is removed.
"""
from __future__ import annotations

import os
import shutil
import zipfile

from .rp_ssrf import max_download_bytes

MAX_ENTRIES = 10_000
MAX_RATIO = 200          # text compresses ~10x, sparse data ~100x; a bomb ~1000x
CHUNK = 1 << 20


class UnsafeArchive(ValueError):
    """The archive would write more than its limits allow."""


def extract(path: str, folder: str, cap: int | None = None) -> None:
    cap = max_download_bytes() if cap is None else cap
    root = os.path.realpath(folder)
    os.makedirs(root, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ENTRIES:
                raise UnsafeArchive(f"the zip holds {len(entries)} entries (at most "
                                    f"{MAX_ENTRIES})")
            written = 0
            for entry in entries:
                written = _one(archive, entry, root, cap, written)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _one(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, root: str, cap: int,
         written: int) -> int:
    target = os.path.realpath(os.path.join(root, _inside(entry.filename)))
    if os.path.commonpath([root, target]) != root:
        raise UnsafeArchive(f"the zip entry {entry.filename!r} points outside its folder")
    if entry.is_dir():
        os.makedirs(target, exist_ok=True)
        return written
    os.makedirs(os.path.dirname(target), exist_ok=True)
    limit = entry.compress_size * MAX_RATIO if entry.compress_size else CHUNK
    size = 0
    with archive.open(entry) as src, open(target, "wb") as out:
        while True:
            data = src.read(CHUNK)
            if not data:
                return written
            size += len(data)
            written += len(data)
            if written > cap:
                raise UnsafeArchive(f"extracting the zip would write more than the download "
                                    f"cap of {cap} bytes (RUNPOD_MAX_DOWNLOAD_BYTES)")
            if size > max(limit, CHUNK):
                raise UnsafeArchive(f"the zip entry {entry.filename!r} inflates more than "
                                    f"{MAX_RATIO} times its compressed size")
            out.write(data)


def _inside(name: str) -> str:
    """The entry's name as a relative path: no drive, no root, no `..` (as zipfile)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return os.path.join(*parts) if parts else "_"
