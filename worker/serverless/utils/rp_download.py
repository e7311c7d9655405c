"""`download_files_from_urls(job_id, urls)` and `file(url)`, as the SDK has them, through
the address guard and size cap of rp_ssrf."""
from __future__ import annotations

import http.client
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ... import backoff
from ...version import __version__
from . import rp_archive
from .rp_ssrf import SSRFError, safe_get

HEADERS = {"User-Agent": f"gpu-worker/{__version__}"}
TRIES = 3


def calculate_chunk_size(file_size: int) -> int:
    if file_size <= 1024 * 1024:
        return 1024
    if file_size <= 1024 * 1024 * 1024:
        return 1024 * 1024
    return 10 * 1024 * 1024


def _length(headers) -> int:
    try:
        return int(headers.get("Content-Length", 0))
    except (TypeError, ValueError):
        return 0


def _disposition_name(headers) -> str:
    for part in (headers.get("Content-Disposition") or "").split(";"):
        key, eq, value = part.partition("=")
        if eq and key.strip().lower() == "filename":
            return value.strip().strip('"')
    return ""


def _fetch_to(url: str, base: str, timeout: float) -> str:
    """Save `url` at `base` + its extension; returns the extension."""
    with safe_get(url, timeout=timeout, headers=HEADERS) as response:
        if response.status >= 400:
            raise http.client.HTTPException(f"HTTP {response.status} for {url}")
        ext = os.path.splitext(_disposition_name(response.headers))[1] or \
            os.path.splitext(urlsplit(url).path)[1]
        with open(base + ext, "wb") as out:
            for chunk in response.chunks(calculate_chunk_size(_length(response.headers))):
                out.write(chunk)
        return ext


def download_files_from_urls(job_id: str, urls) -> list:
    """Download each URL into jobs/<job_id>/downloaded_files/; returns absolute paths in
    the order given, None for a URL that is None or could not be fetched (after 3 tries).
    A URL the guard refuses raises SSRFError: it is never retried or silently skipped."""
    directory = os.path.abspath(os.path.join("jobs", job_id, "downloaded_files"))
    os.makedirs(directory, exist_ok=True)

    def one(url):
        if url is None:
            return None
        base = os.path.join(directory, str(uuid.uuid4()))
        for attempt in range(TRIES):
            try:
                return os.path.abspath(base + _fetch_to(url, base, timeout=5))
            except SSRFError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                if attempt == TRIES - 1:
                    print(f"Failed to download {url}: {exc}")
                    return None
                time.sleep(backoff.delay(attempt + 1, 0.5))

    if isinstance(urls, str):
        urls = [urls]
    with ThreadPoolExecutor() as pool:
        return list(pool.map(one, urls))


def file(file_url: str) -> dict:
    """Download one file into job_files/ (a zip is extracted next to it)."""
    os.makedirs("job_files", exist_ok=True)
    with safe_get(file_url, timeout=30, headers=HEADERS) as response:
        if response.status >= 400:
            raise http.client.HTTPException(f"HTTP {response.status} for {file_url}")
        original = _disposition_name(response.headers) or \
            os.path.basename(urlsplit(file_url).path)
        file_type = os.path.splitext(original)[1].replace(".", "")
        name = str(uuid.uuid4())
        path = os.path.join("job_files", f"{name}.{file_type}")
        with open(path, "wb") as out:
            for chunk in response.chunks(calculate_chunk_size(_length(response.headers))):
                out.write(chunk)
    extracted = None
    if file_type == "zip":
        extracted = os.path.join("job_files", name)
        rp_archive.extract(path, extracted)     # within the cap: entries, bytes, ratio
        extracted = os.path.abspath(extracted)
    return {"file_path": os.path.abspath(path), "type": file_type,
            "original_name": original, "extracted_path": extracted}
