"""The processes of a soak: started with their output in a file, waited for, stopped;
found in a worker's tree (its forkserver, the handler's children: each wrote its pid to
$SOAK_CHILDREN at import); their memory and descriptors; and a client that fills its
connection and never reads."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import psutil
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list, env: dict, log, cwd=None) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def wait_http(url: str, proc: subprocess.Popen, log, timeout: float = 60) -> None:
    """Until `url` answers (under 500), while `proc` lives."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered:\n{open(log).read()[-3000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGCONT (it may be stopped), SIGTERM, and SIGKILL after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _known_children(children_file) -> set:
    try:
        return {int(p) for p in open(children_file).read().split()}
    except FileNotFoundError:
        return set()


def tree(parent_pid: int) -> list:
    try:
        return psutil.Process(parent_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def handler_children(parent_pid: int, children_file) -> list:
    known = _known_children(children_file)
    return [p.pid for p in tree(parent_pid) if p.pid in known and _alive(p)]


def forkservers(parent_pid: int, children_file) -> list:
    """The parent's own processes that run multiprocess's forkserver and are not a
    handler's child (those are forked from it and carry its command line)."""
    known = _known_children(children_file)
    out = []
    for p in tree(parent_pid):
        try:
            if (p.ppid() == parent_pid and p.pid not in known and _alive(p)
                    and "multiprocess.forkserver" in " ".join(p.cmdline())):
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def kill(pid: int, sig=signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def sample(pid: int) -> dict | None:
    """The process's resident memory (MB) and open descriptors."""
    try:
        p = psutil.Process(pid)
        return {"rss_mb": p.memory_info().rss / 2**20, "fds": p.num_fds()}
    except psutil.NoSuchProcess:
        return None


def stall(pid: int, seconds: float) -> threading.Thread:
    """SIGSTOP now, SIGCONT after `seconds` (in a thread: the soak goes on)."""
    kill(pid, signal.SIGSTOP)

    def resume():
        time.sleep(seconds)
        kill(pid, signal.SIGCONT)
    t = threading.Thread(target=resume, daemon=True)
    t.start()
    return t


def slow_reader(port: int, path: str, seconds: float, count: int = 2000) -> threading.Thread:
    """A client that pipelines `count` GETs on one connection with a 4 KB receive
    buffer and reads nothing for `seconds`: the server's answers back up on it."""
    def run():
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(seconds)
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode() * count)
            time.sleep(seconds)
            s.close()
        except OSError:
            pass          # the server closed it or never read it all: as a server may
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
