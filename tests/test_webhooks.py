"""Webhooks bounded in every dimension (sources/webhook_post.py), through a real local
API and real receivers on loopback: one that streams its answer without end costs the
parent nothing, one that trickles is cut at the deadline and keeps no sender from other
jobs, a redirect is not followed, and where the guard is on (by default wherever the API
listens beyond loopback) a private receiver is refused unless allowed."""
import socket
import threading
import time

import psutil
import pytest

from tests.support import Hook


class Raw:
    """A receiver that answers with `answer(conn, request, stop)` after reading the
    request's first bytes."""

    def __init__(self, answer):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.hits = 0
        self.stop = threading.Event()

        def serve():
            while not self.stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                self.hits += 1
                threading.Thread(target=self._one, args=(conn, answer), daemon=True).start()
        threading.Thread(target=serve, daemon=True).start()

    def _one(self, conn, answer):
        try:
            answer(conn, conn.recv(65536), self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def endless(conn, request, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
    while not stop.is_set():
        conn.sendall(chunk)


def trickle(conn, request, stop):
    for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
        if stop.wait(0.2):
            return
        conn.sendall(bytes([byte]))


def redirect(conn, request, stop):
    conn.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\n"
                 b"Content-Length: 0\r\n\r\n")


def _log_until(server, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log.read_text()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never logged:\n{server.log.read_text()[-3000:]}")


def test_an_endless_and_a_trickling_receiver_cost_nothing_and_block_no_one(server):
    s = server("edges.py", WORKER_WEBHOOK_TIMEOUT="1.5")
    parent = psutil.Process(s.proc.pid)
    flood, slow, fine = Raw(endless), Raw(trickle), Hook()
    try:
        before = parent.memory_info().rss
        a = s.post("/run", {"input": {"do": "echo"}, "webhook": flood.url}).json()["id"]
        b = s.post("/run", {"input": {"do": "echo"}, "webhook": slow.url}).json()["id"]
        s.until(a, lambda st: "deliveryTime" in st)        # the status read, the rest not
        assert parent.memory_info().rss - before < 64 * 2**20
        c = s.post("/run", {"input": {"do": "echo"}, "webhook": fine.url}).json()["id"]
        started = time.monotonic()
        assert fine.wait(1, 10)[0][1]["id"] == c, "a sender was held"
        assert time.monotonic() - started < 5
        log = _log_until(s, f"webhook {slow.url} not delivered after 4 tries")
        assert "no whole answer within 1.5s" in log and b in log
        assert slow.hits == 4
        assert parent.memory_info().rss - before < 64 * 2**20
    finally:
        for r in (flood, slow):
            r.close()
        fine.server.shutdown()


def test_a_redirect_is_not_followed(server):
    s = server("edges.py")
    hop = Raw(redirect)
    try:
        s.post("/run", {"input": {"do": "echo"}, "webhook": hop.url})
        _log_until(s, "webhooks do not follow redirects")
        assert hop.hits == 1
    finally:
        hop.close()


def test_with_the_guard_on_a_private_receiver_is_refused_unless_allowed(server):
    hook = Hook()
    try:
        guarded = server("edges.py", WORKER_WEBHOOK_GUARD="on")
        guarded.post("/run", {"input": {"do": "echo"}, "webhook": hook.url})
        _log_until(guarded, "resolves to the non-public address 127.0.0.1")
        allowed = server("edges.py", WORKER_WEBHOOK_GUARD="on",
                         WORKER_WEBHOOK_ALLOW="10.0.0.0/8,127.0.0.0/8")
        job = allowed.post("/run", {"input": {"do": "echo"}, "webhook": hook.url}).json()["id"]
        allowed.until(job, lambda st: "deliveryTime" in st)
        assert [p["id"] for p in hook.posts] == [job]
    finally:
        hook.server.shutdown()


def test_the_guard_follows_the_addresses_bound_not_the_host_string():
    """"auto" is on exactly when a bound socket takes connections from beyond loopback:
    127.0.0.2 and localhost are loopback although not 127.0.0.1; 0.0.0.0 and :: are not."""
    from worker.config import Settings
    from worker.sources import listen
    from worker.sources.webhook_post import Policy

    def exposed(host):
        sockets = listen.bind(host, 0)
        try:
            return listen.beyond_loopback(sockets)
        finally:
            for sock in sockets:
                sock.close()
    for host, beyond in (("127.0.0.1", False), ("127.0.0.2", False), ("localhost", False),
                         ("", False), ("0.0.0.0", True)) + ((("::", True), ("::1", False))
                                                            if socket.has_ipv6 else ()):
        assert exposed(Settings(api_host=host).api_host) is beyond, host
    assert Policy(Settings(), exposed=True).check
    assert not Policy(Settings(), exposed=False).check
    assert not Policy(Settings(webhook_guard="off"), exposed=True).check
    assert Policy(Settings(webhook_guard="on"), exposed=False).check


def test_a_proxy_is_the_workers_setting_never_the_environments(server):
    """WORKER_WEBHOOK_PROXY sends the webhook through that proxy (an absolute URL on an
    http proxy); HTTP_PROXY in the environment is ignored."""
    seen = []

    def proxy(conn, request, stop):
        seen.append(request.split(b"\r\n", 1)[0])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    via = Raw(proxy)
    hook = Hook()
    try:
        s = server("edges.py", WORKER_WEBHOOK_PROXY=via.url.rsplit("/", 1)[0],
                   HTTP_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
        job = s.post("/run", {"input": {"do": "echo"}, "webhook": hook.url}).json()["id"]
        s.until(job, lambda st: "deliveryTime" in st)
        assert seen == [f"POST {hook.url} HTTP/1.1".encode()] and hook.posts == []
        direct = server("edges.py", HTTP_PROXY="http://127.0.0.1:9",
                        http_proxy="http://127.0.0.1:9")
        job = direct.post("/run", {"input": {"do": "echo"}, "webhook": hook.url}).json()["id"]
        direct.until(job, lambda st: "deliveryTime" in st)
        assert [p["id"] for p in hook.posts] == [job]
    finally:
        via.close()
        hook.server.shutdown()


def test_a_proxys_user_and_password_reach_it(server):
    """WORKER_WEBHOOK_PROXY=http://user:password@host:port: the proxy gets them as Basic
    Proxy-Authorization (they used to be dropped while the setting showed them in use)."""
    import base64
    seen = []

    def proxy(conn, request, stop):
        seen.append([line for line in request.split(b"\r\n")
                     if line.lower().startswith(b"proxy-authorization:")])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    via = Raw(proxy)
    hook = Hook()
    try:
        host = via.url.rsplit("/", 1)[0].removeprefix("http://")
        s = server("edges.py", WORKER_WEBHOOK_PROXY=f"http://al%40ice:p%3Ass@{host}")
        job = s.post("/run", {"input": {"do": "echo"}, "webhook": hook.url}).json()["id"]
        s.until(job, lambda st: "deliveryTime" in st)
        assert seen == [[b"Proxy-Authorization: Basic " +
                         base64.b64encode(b"al@ice:p:ss")]]
    finally:
        via.close()
        hook.server.shutdown()


def test_a_host_without_ipv6_still_listens_on_what_it_has(monkeypatch):
    """localhost resolves to ::1 too; where the kernel has no IPv6 the API binds
    127.0.0.1 alone (as asyncio did), and fails only when nothing could be bound."""
    import errno
    from worker.sources import listen
    real = socket.socket

    def no_ipv6(family=socket.AF_INET, *a, **kw):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))])
    monkeypatch.setattr(socket, "socket", no_ipv6)
    sockets = listen.bind("localhost", 0)
    try:
        assert [s.getsockname()[0] for s in sockets] == ["127.0.0.1"]
    finally:
        for s in sockets:
            s.close()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))])
    with pytest.raises(OSError):
        listen.bind("localhost", 0)


def test_an_address_means_what_it_says(server):
    """An empty --rp_api_host is 127.0.0.1, as an empty WORKER_API_HOST already was (never
    every interface); a loopback address other than 127.0.0.1 keeps the guard off, so a
    loopback receiver gets its webhook; 0.0.0.0 turns it on."""
    empty = server("edges.py", args=("--rp_api_host", ""))
    bound = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(empty.proc.pid)
             .net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert bound == {("127.0.0.1", empty.port)}, bound
    assert f"local API on http://127.0.0.1:{empty.port}" in empty.log.read_text()
    hook = Hook()
    try:
        other = server("edges.py", address="127.0.0.2", WORKER_API_HOST="127.0.0.2")
        job = other.post("/run", {"input": {"do": "echo"}, "webhook": hook.url}).json()["id"]
        other.until(job, lambda st: "deliveryTime" in st)
        assert [p["id"] for p in hook.posts] == [job]
        every = server("edges.py", WORKER_API_HOST="0.0.0.0")
        every.post("/run", {"input": {"do": "echo"}, "webhook": hook.url})
        _log_until(every, "resolves to the non-public address 127.0.0.1")
    finally:
        hook.server.shutdown()
