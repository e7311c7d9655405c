"""Nothing a test or a benchmark runs leaves loopback: an audit hook (PEP 578) refuses,
in every Python process of a run, a socket's connect/connect_ex/sendto/sendmsg to an
address that is not loopback, and a name look-up (getaddrinfo, gethostbyname…) of a
name that is not loopback. Setting RUNPOD_SKIP_AUTO_SYSTEM_CHECKS is not enough: a
handler that imports runpod in a production mode runs runpod-python's network check,
which dials 8.8.8.8:53, and nothing else would notice.

How it reaches every process: tests/loopback_pytest.py and bench/loopback.py call
`enforce`, which puts this folder first on PYTHONPATH and names a record file in
RECORD_ENV. Every interpreter started from then on (worker parents, forkservers, spawned
children, handler subprocesses, gateways, stand-in queues, scripts) imports
sitecustomize.py from here, which imports this module; a forked process keeps its
parent's hook (an audit hook cannot be removed). The worker keeps PYTHONPATH and the
rest of the environment for what it starts (safe_path.py drops only PYTHONPATH's empty
entries, launcher.py only the secrets), so the product knows nothing of this. A test
that writes a sitecustomize of its own (shadowing this one) imports this module from it.
Not covered: an interpreter started with -I, -E or -S (none is), and sockets of native
code (a C library's own connect).

Why a record as well as the exception: the code that dials may swallow the error, or
make another of it (runpod-python's network check: a failed fitness check). Each
refusal appends one JSON line (pid, argv, event, address, a short stack) to the record,
and the test (or the benchmark) that was running fails.
"""
import os
import sys

RECORD_ENV = "LOOPBACK_ONLY_RECORD"
HERE = os.path.dirname(os.path.abspath(__file__))

# The events through which Python code reaches another machine: dialling an address,
# and asking a resolver (DNS) about a name or an address.
DIAL = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
LOOK_UP = frozenset({"socket.getaddrinfo", "socket.gethostbyname",
                     "socket.gethostbyname_ex", "socket.gethostbyaddr",
                     "socket.getnameinfo"})
WATCHED = DIAL | LOOK_UP
NAMES = ("localhost", "localhost.")


class Refused(PermissionError):
    """What a firewall would answer (EPERM): code that copes with no network copes."""


def _text(host):
    return host.decode("ascii", "replace") if isinstance(host, bytes) else host


def _numeric(host) -> bytes | None:
    """The address `host` spells (4 or 16 bytes), or None for a name."""
    import socket       # here, not at start-up: every interpreter of the run imports us
    host = _text(host)
    if not isinstance(host, str):
        return None
    try:
        return socket.inet_aton(host)          # also the short forms: 127.1
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    except OSError:
        return None


def _local_names() -> frozenset:
    """The names /etc/hosts gives a loopback address, where the resolver reads that file
    first (hosts: files …): their look-up never leaves the machine. The machine's own
    name is one here (127.0.0.1 vm), and http.server asks for it: it binds 0.0.0.0, then
    socket.getfqdn() looks the host name up."""
    global _LOCAL
    if _LOCAL is None:
        _LOCAL = frozenset()
        try:
            with open("/etc/nsswitch.conf") as f:
                order = [ln.split()[1:2] for ln in f if ln.startswith("hosts:")]
            if order == [["files"]]:
                with open("/etc/hosts") as f:
                    rows = [ln.split("#", 1)[0].split() for ln in f]
                _LOCAL = frozenset(name.lower() for row in rows if len(row) > 1
                                   and _loopback_number(row[0]) for name in row[1:])
        except OSError:
            pass
    return _LOCAL


_LOCAL = None


def loopback(host) -> bool:
    """127.0.0.0/8, ::1, ::ffff:127.x.y.z, the name localhost, or a name /etc/hosts gives
    one of those (above)."""
    text = _text(host)
    if isinstance(text, str) and (text.lower() in NAMES or text.lower() in _local_names()):
        return True
    return _loopback_number(host)


def _loopback_number(host) -> bool:
    packed = _numeric(host)
    if packed is None:
        return False
    if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        packed = packed[12:]                   # IPv4-mapped
    return packed[0] == 127 if len(packed) == 4 else packed == b"\0" * 15 + b"\1"


def _allowed(event: str, args: tuple) -> bool:
    import socket
    if event in DIAL:
        sock, address = args[0], args[1]
        if address is None or sock.family == socket.AF_UNIX:
            return True                        # a connected socket: checked at connect
        return sock.family in (socket.AF_INET, socket.AF_INET6) and loopback(address[0])
    host = args[0][0] if event == "socket.getnameinfo" else args[0]
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex") \
            and (host in (None, "", b"") or _numeric(host) is not None):
        return True     # not looked up (binding 0.0.0.0 asks for one): connect checks it
    return loopback(host)


def _record(event: str, args: tuple) -> None:
    import json
    import traceback
    address = args[1] if event in DIAL else args[0]
    line = json.dumps({"pid": os.getpid(), "argv": list(getattr(sys, "orig_argv", sys.argv)),
                       "event": event, "address": repr(address),
                       "stack": "".join(traceback.format_stack(limit=8)[:-2])})  # not ours
    fd = os.open(_RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (line + "\n").encode())   # one write: lines of processes do not mix
    finally:
        os.close(fd)


def _hook(event: str, args: tuple) -> None:
    # Called for every audit event of the process (imports, opens…): return at once.
    if event in WATCHED and not _allowed(event, args):
        try:
            _record(event, args)
        except Exception:                      # noqa: BLE001 - refuse all the same
            pass
        address = args[1] if event in DIAL else args[0]
        raise Refused(f"loopback only (tests/loopback_only): {event} {address!r} refused")


def enforce(record: str) -> None:
    """Guard this process and every Python process it starts from now on; refusals are
    appended to `record` (made writable by all: a child may run as another user)."""
    os.close(os.open(record, os.O_WRONLY | os.O_CREAT, 0o666))
    os.chmod(record, 0o666)
    os.environ[RECORD_ENV] = record
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != HERE]
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *path])
    install()
    # Compiled once here, so that each interpreter of the run reads it compiled (not
    # compiling it again, some ms, where PYTHONDONTWRITEBYTECODE is set).
    import py_compile
    for name in ("sitecustomize.py", "loopback_guard.py"):
        try:
            py_compile.compile(os.path.join(HERE, name), doraise=True)
        except (OSError, py_compile.PyCompileError):
            pass


def read(record: str, offset: int = 0) -> tuple[list, int]:
    """The refusals recorded past `offset`, and the offset after them."""
    import json
    try:
        if os.stat(record).st_size <= offset:  # the common case: one stat
            return [], offset
        with open(record, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    whole = data[:data.rfind(b"\n") + 1]       # a line being written is read next time
    return [json.loads(x) for x in whole.splitlines() if x.strip()], offset + len(whole)


def describe(refusal: dict) -> str:
    return (f"{refusal['event']} {refusal['address']} by pid {refusal['pid']} "
            f"({' '.join(refusal['argv'])[:200]}), at:\n{refusal['stack']}")


_RECORD = ""


def install() -> None:
    """Add the hook to this process, once; the record is read now (a child may clear its
    environment later)."""
    global _RECORD
    if os.environ.get(RECORD_ENV):
        if not _RECORD:
            sys.addaudithook(_hook)
        _RECORD = os.environ[RECORD_ENV]


install()
