"""The guard of tests/loopback_only/ itself, in real processes: what leaves loopback is
refused and recorded, what stays is not. Each subprocess here records into a file of its
own (the suite's record would fail this test)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.support import PYTHON, run_cli

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "loopback_only"))
import loopback_guard  # noqa: E402


def _run(code: str, record, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, loopback_guard.RECORD_ENV: str(record)}
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, **kw)


def _records(record) -> list:
    return loopback_guard.read(str(record))[0]


def test_a_public_address_is_refused_and_recorded(tmp_path):
    record = tmp_path / "record"
    proc = _run("import socket; socket.create_connection(('192.0.2.1', 53), timeout=5)", record)
    assert proc.returncode == 1 and "Refused: loopback only" in proc.stderr, proc.stderr
    [refusal] = _records(record)
    assert refusal["event"] == "socket.connect" and "192.0.2.1" in refusal["address"]
    assert refusal["argv"][1] == "-c" and "create_connection" in refusal["stack"]


def test_a_swallowed_refusal_is_recorded_all_the_same(tmp_path):
    record = tmp_path / "record"
    proc = _run("import socket\ntry:\n    socket.socket().connect_ex(('198.51.100.1', 443))\n"
                "except OSError:\n    pass\n", record)
    assert proc.returncode == 0, proc.stderr
    assert [r["event"] for r in _records(record)] == ["socket.connect"]


@pytest.mark.parametrize("host", ["unreachable.invalid", "unreachable.invalid.",
                                  "localhost.example.invalid"])
def test_a_name_look_up_is_refused(tmp_path, host):
    record = tmp_path / "record"
    proc = _run(f"import socket; socket.getaddrinfo({host!r}, 80)", record)
    assert "Refused: loopback only" in proc.stderr, proc.stderr
    assert [(r["event"], r["address"]) for r in _records(record)] == \
        [("socket.getaddrinfo", repr(host))]


def test_loopback_is_allowed(tmp_path):
    record = tmp_path / "record"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = (f"import socket\nfor host in ('127.0.0.1', 'localhost', '127.0.0.1'):\n"
                f"    socket.create_connection((host, {port}), timeout=5).sendall(b'x')\n"
                "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"u.sendto(b'x', ('127.0.0.2', {port}))\n"
                "socket.getaddrinfo(None, 80); socket.getaddrinfo('0.0.0.0', 80)\n")
        proc = _run(code, record)
    assert proc.returncode == 0, proc.stderr
    assert _records(record) == []


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("127.1", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True),
    (b"127.0.0.1", True), ("10.0.0.1", False), ("0.0.0.0", False), ("::", False),
    ("::ffff:192.0.2.1", False), ("::2", False), ("localhost.example.invalid", False),
    ("unreachable.invalid", False), ("", False), (None, False)])
def test_what_counts_as_loopback(host, ok):
    assert loopback_guard.loopback(host) is ok


def test_a_name_etc_hosts_gives_loopback_is_allowed(tmp_path):
    """http.server binding 0.0.0.0 looks the machine's own name up (socket.getfqdn): where
    /etc/hosts answers it with a loopback address, the look-up stays here."""
    if socket.gethostname().lower() not in loopback_guard._local_names():
        pytest.skip("/etc/hosts gives this machine's name no loopback address (or the "
                    "resolver does not read it first)")
    record = tmp_path / "record"
    proc = _run("from http.server import HTTPServer, BaseHTTPRequestHandler\n"
                "HTTPServer(('0.0.0.0', 0), BaseHTTPRequestHandler).server_close()", record)
    assert proc.returncode == 0, proc.stderr
    assert _records(record) == []


def test_a_worker_child_is_guarded_too(tmp_path):
    """A handler (in the worker's child: forked from an exec'd forkserver) dials a public
    address at import and swallows the error: the refusal is recorded, with the child's
    pid, not the parent's."""
    handler = tmp_path / "dialler.py"
    handler.write_text(
        "import os, socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 53), timeout=5)\n"
        "except OSError as exc:\n"
        "    print('swallowed:', exc, flush=True)\n"
        "open(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\n"
        "import worker\n"
        "worker.serverless.start({'handler': lambda job: 'done'})\n")
    record = tmp_path / "record"
    pid_file = tmp_path / "pid"
    proc = run_cli([PYTHON, "-m", "worker", str(handler), "--test_input", '{"input": {}}'],
                   cwd=tmp_path, env={loopback_guard.RECORD_ENV: str(record),
                                      "PID_FILE": str(pid_file)})
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stdout + proc.stderr
    [refusal] = _records(record)
    assert refusal["event"] == "socket.connect" and "192.0.2.1" in refusal["address"]
    assert refusal["pid"] == int(pid_file.read_text()), refusal


def test_the_record_is_one_json_line_a_refusal(tmp_path):
    record = tmp_path / "record"
    _run("import socket\nfor h in ('a.example', 'b.example'):\n    try:\n"
         "        socket.gethostbyname(h)\n    except OSError:\n        pass\n", record)
    lines = record.read_text().splitlines()
    assert [json.loads(x)["address"] for x in lines] == ["'a.example'", "'b.example'"]
