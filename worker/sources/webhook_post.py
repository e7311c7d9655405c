"""One webhook try, bounded in every dimension.

A receiver is a URL a client gave us. So a try has one deadline from connect to the last
byte read (a watchdog shuts the socket down: a receiver that trickles a byte now and then
cannot hold a sender), reads the status and at most ANSWER_CAP bytes of the answer (one
that streams without end costs nothing), follows no redirect, and never uses the
environment's proxies (WORKER_WEBHOOK_PROXY names one on purpose). The address policy is
the download guard's (rp_ssrf): every address the host resolves to must be public —
checked by default wherever the API listens beyond loopback (load-balancing and realtime
modes), where any client of the endpoint could otherwise make the worker post to internal
addresses, cloud metadata included — unless the host or its address is in
WORKER_WEBHOOK_ALLOW (names or CIDRs, for receivers inside a cluster). The connection goes
to the address that was checked.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import threading
from urllib.parse import unquote, urlsplit

from ..config import Settings
from ..setting_rules import proxy_url
from ..serverless.utils.rp_ssrf import Pinned, is_safe_address

ANSWER_CAP = 64 * 1024


MAX_WEBHOOK = 2048


def refusal(url) -> str | None:
    """Why `url` is not a webhook this worker will post to (None: it is): an http(s) URL
    with a host, no whitespace or control character (it goes into log lines and a
    request line), at most MAX_WEBHOOK characters."""
    if not isinstance(url, str):
        return f"it is a {type(url).__name__}"
    if len(url) > MAX_WEBHOOK:
        return f"it is {len(url)} characters long (at most {MAX_WEBHOOK})"
    if any(c.isspace() or ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in url):
        return "it holds whitespace or a control character"
    try:
        parts = urlsplit(url)
        parts.port                      # noqa: B018 - raises on a port that is not one
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it needs http:// or https:// and a host"
    return None


class WebhookRefused(Exception):
    """The webhook was not sent: the policy refused its address, or the answer was a
    redirect (not followed). Not retried."""


class Policy:
    def __init__(self, settings: Settings, exposed: bool):
        """`exposed`: the API listens beyond loopback (listen.beyond_loopback of the
        sockets it bound), which turns an "auto" guard on."""
        guard = settings.webhook_guard
        self.check = guard == "on" or (guard == "auto" and exposed)
        self.hosts, self.networks = set(), []
        for item in settings.webhook_allow:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.hosts.add(item.lower())
        self.proxy = proxy_url(settings.webhook_proxy)     # checked when the settings were made
        self.deadline = settings.webhook_timeout

    def addresses(self, host: str, port: int) -> list:
        """The addresses to try; WebhookRefused when the policy refuses the host."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"could not resolve {host!r}: {exc}") from None
        ips = list(dict.fromkeys(info[4][0] for info in infos))
        if self.check and host.lower() not in self.hosts:
            for ip in ips:
                if not is_safe_address(ip) and not self._allowed(ip):
                    raise WebhookRefused(
                        f"{host!r} resolves to the non-public address {ip} (webhooks from an "
                        "API reachable beyond loopback go to public addresses only; "
                        "WORKER_WEBHOOK_ALLOW lists private receivers)")
        return ips

    def _allowed(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in net for net in self.networks)


def post(url: str, data: bytes, headers: dict, policy: Policy) -> int:
    """POST `data` to `url` once, within the policy; the answer's status. Raises
    WebhookRefused (do not retry) or OSError / HTTPException (retry)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    # Through a proxy the proxy resolves the host (it may be the only one that can);
    # ours is needed, and made, only to check the address.
    ips = policy.addresses(parts.hostname, port) \
        if policy.check or policy.proxy is None else None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if policy.proxy is not None:
        conn = _through_proxy(policy.proxy, parts, port, tls, policy.deadline)
        if not tls:
            target, headers = url, {**headers, **proxy_auth(policy.proxy)}
    else:
        conn = Pinned(ips[0], parts.hostname, port, tls, policy.deadline)
    watchdog = threading.Timer(policy.deadline, _cut, (conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target, body=data, headers=headers)
        answer = conn.getresponse()
        answer.read(ANSWER_CAP)              # what it says, never more: then hang up
        if 300 <= answer.status < 400:
            raise WebhookRefused(f"the receiver answered {answer.status} (a redirect: "
                                 "webhooks do not follow redirects)")
        return answer.status
    except (OSError, http.client.HTTPException):
        if not watchdog.is_alive():          # it fired: the deadline cut the socket
            raise TimeoutError(f"no whole answer within {policy.deadline:g}s") from None
        raise
    finally:
        watchdog.cancel()
        conn.close()


def _through_proxy(proxy, parts, port: int, tls: bool, timeout: float):
    """A connection through an http:// proxy: CONNECT for https, else the absolute URL."""
    if tls:
        conn = http.client.HTTPSConnection(proxy.hostname, proxy.port or 80, timeout=timeout)
        conn.set_tunnel(parts.hostname, port, headers=proxy_auth(proxy))
        return conn
    return http.client.HTTPConnection(proxy.hostname, proxy.port or 80, timeout=timeout)


def proxy_auth(proxy) -> dict:
    """The proxy's user and password, if its URL has them, as Basic Proxy-Authorization."""
    if proxy.username is None:
        return {}
    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def _cut(conn) -> None:
    """The deadline: shut the socket down, so a blocked read ends now."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
