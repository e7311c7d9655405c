"""The sockets a server listens on, bound before the server starts, so that what the
banner prints and what the webhook guard decides from are the addresses actually bound,
never the host string (a name can resolve anywhere; an empty host is every interface to
a socket, which Settings turns into 127.0.0.1 first).

Every address the host resolves to is bound (as asyncio and uvicorn do for a name), one
socket each, IPv6 ones without the IPv4-mapped range; port 0 takes one free port for all.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import sys

BACKLOG = 2048      # uvicorn's default


def bind(host: str, port: int) -> list:
    """Listening sockets for every address `host` resolves to; OSError says why not."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list = []
    skipped: list = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
                (i[0], i[1], i[2], None, i[4]) for i in infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:          # a family this host lacks (IPv6 off), as asyncio
                skipped.append(exc)
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:      # one port for every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:    # ::1 where IPv6 loopback is off
                    raise
                sockets.remove(sock)
                sock.close()
                skipped.append(exc)
                continue
            sock.listen(BACKLOG)
        if not sockets:
            raise skipped[0] if skipped else OSError(f"{host!r} resolves to no address")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_or_say(host: str, port: int, program: str) -> list | None:
    """bind(), or None after one line that says why the address could not be had."""
    try:
        return bind(host, port)
    except OSError as exc:
        print(f"{program}: error: cannot listen on {host}:{port}: {exc}", file=sys.stderr,
              flush=True)
        return None


def beyond_loopback(sockets: list) -> bool:
    """Does any of these sockets take connections from beyond this machine?"""
    for sock in sockets:
        ip = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
        if getattr(ip, "ipv4_mapped", None) is not None:
            ip = ip.ipv4_mapped
        if not ip.is_loopback:
            return True
    return False


def url(sockets: list) -> str:
    """http://address:port of the first socket (IPv6 in brackets)."""
    host, port = sockets[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
