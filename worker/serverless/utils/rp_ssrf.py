"""Fetching a URL a job gave us without letting it reach the worker's own network.

The same rules as the SDK's guard: http(s) only; every address the host resolves to must
be public (no loopback, private, link-local — 169.254.169.254 included —, CGNAT,
reserved, multicast, unspecified, or IPv4-mapped forms of those); the connection goes to
the address that was checked (no second DNS answer can swap it); each redirect hop is
checked again, at most 5; bodies are capped (RUNPOD_MAX_DOWNLOAD_BYTES, default 5 GiB).
RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true lifts the address rule only.

We connect with http.client and never through an environment proxy, so the check always
holds (the SDK refuses the fetch when a proxy is configured).
"""
from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
from typing import Iterator
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 5
DEFAULT_MAX_BYTES = 5 * 1024 ** 3
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class SSRFError(ValueError):
    """A URL refused as unsafe (a non-public address, a scheme, a size)."""


def private_allowed() -> bool:
    return os.environ.get("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "").strip().lower() in (
        "1", "true", "yes")


def max_download_bytes() -> int:
    try:
        value = int(os.environ.get("RUNPOD_MAX_DOWNLOAD_BYTES", ""))
    except ValueError:
        return DEFAULT_MAX_BYTES
    return value if value > 0 else DEFAULT_MAX_BYTES


def is_safe_address(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.version == 6:
        if address.is_site_local:                 # fec0::/10: deprecated, still internal
            return False
        teredo = address.teredo
        # An IPv4 address inside: mapped (::ffff:a.b.c.d), 6to4 (2002:ab:cd::), or a
        # Teredo client's: it must be public itself.
        inner = address.ipv4_mapped or address.sixtofour or (teredo and teredo[1])
        if inner is not None:
            address = inner
    if address.version == 4 and address in _CGNAT:
        return False
    return address.is_global and not (address.is_private or address.is_loopback
                                      or address.is_link_local or address.is_reserved
                                      or address.is_multicast or address.is_unspecified)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SSRFError(f"could not resolve host {host!r}: {exc}") from exc
    ips = list(dict.fromkeys(info[4][0] for info in infos))
    if not ips:
        raise SSRFError(f"no addresses resolved for host {host!r}")
    if not private_allowed():
        for ip in ips:
            if not is_safe_address(ip):
                raise SSRFError(f"host {host!r} resolves to non-public address {ip}")
    return ips


class Pinned(http.client.HTTPSConnection):
    """HTTP(S) to one checked address, with the URL's host name for Host and TLS."""

    def __init__(self, ip: str, host: str, port: int, tls: bool, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip, self._tls = ip, tls

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)
        if self._tls:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


class Response:
    """A response being read: status, headers, and the body in capped chunks."""

    def __init__(self, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse,
                 url: str):
        self._conn, self._raw, self.url = conn, raw, url
        self.status = raw.status
        self.headers = raw.headers

    def chunks(self, size: int, cap: int | None = None) -> Iterator[bytes]:
        cap = max_download_bytes() if cap is None else cap
        total = 0
        while True:
            data = self._raw.read(size)
            if not data:
                return
            total += len(data)
            if total > cap:
                self.close()
                raise SSRFError(f"download exceeds size cap: >{cap} bytes")
            yield data

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def safe_get(url: str, timeout: float = 30, headers: dict | None = None,
             max_bytes: int | None = None) -> Response:
    """GET `url` under the rules above; raises SSRFError when refused, OSError (or
    http.client.HTTPException) when the fetch fails."""
    cap = max_download_bytes() if max_bytes is None else max_bytes
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme not in ("http", "https"):
            raise SSRFError(f"blocked URL scheme {parts.scheme!r}: {current}")
        if not parts.hostname:
            raise SSRFError(f"URL has no host: {current}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        response = _first_reachable(resolve(parts.hostname, port), parts, port, tls,
                                    timeout, headers or {})
        if response.status in (301, 302, 303, 307, 308):
            location = response.headers.get("Location")
            response.close()
            if not location:
                raise SSRFError(f"redirect without Location header: {current}")
            current = urljoin(current, location)
            continue
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            response.close()
            raise SSRFError(f"download exceeds size cap: {length} > {cap} bytes")
        return response
    raise SSRFError(f"exceeded maximum redirects ({MAX_REDIRECTS}): {url}")


def _first_reachable(ips, parts, port, tls, timeout, headers) -> Response:
    """The first address that accepts the connection (a dual-stack host may have an
    address this machine cannot route)."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    last: Exception | None = None
    for ip in ips:
        conn = Pinned(ip, parts.hostname, port, tls, timeout)
        try:
            conn.request("GET", target, headers=headers)
            return Response(conn, conn.getresponse(), parts.geturl())
        except (ConnectionError, socket.timeout) as exc:
            conn.close()
            last = exc
        except BaseException:
            conn.close()
            raise
    raise last
