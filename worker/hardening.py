"""Secrets out of the handler's reach (Linux; a no-op elsewhere).

The parent holds RUNPOD_AI_API_KEY and WORKER_API_TOKEN in its environment; the child,
which runs user code, starts without them. But a handler running as the same user could
read /proc/<parent>/environ — and, as root with CAP_SYS_PTRACE (these containers' default),
any process's. So: the parent and the launcher (the forkserver) mark themselves
non-dumpable, which makes their /proc files (environ, maps, mem) readable only with
CAP_SYS_PTRACE — or, for reading, CAP_SYS_ADMIN or CAP_PERFMON, as measured on this
kernel (6.18) — and every child drops those three from its effective, permitted,
inheritable, ambient and bounding sets before the module runs (nothing it starts can get
them back; WORKER_CHILD_KEEP_CAPS keeps some: GPU performance counters for Nsight Compute
or CUPTI need CAP_SYS_ADMIN unless the driver lets every user profile), then marks itself
dumpable again (its own core dumps, debuggers and profilers work as before).

Processes the worker did not start (pid 1: tini, a platform's shell) are not covered by
that: WORKER_CHILD_USER runs the child as another user (`become`), which can read no
root process's /proc files at all.

The forkserver runs user code too (the preloads, a warm import, hooks at fork and at
exit), so it drops to a child's rights itself before it imports anything
(`drop_child_rights`, from child/preload_first.py): a child forked from it has them from
its first instruction.
"""
from __future__ import annotations

import ctypes
import os

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER = 47, 3
# What reads another process's /proc/<pid>/environ despite its being non-dumpable, and
# what reads any memory past every rule: a kernel module, /dev/mem and /proc/kcore, BPF.
READERS = {"SYS_PTRACE": 19, "SYS_ADMIN": 21, "PERFMON": 38, "SYS_MODULE": 16,
           "SYS_RAWIO": 17, "BPF": 39}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LIBC: list = []


def _libc():
    """The C library, from the process's own symbols (find_library would run ldconfig: a
    few milliseconds on every child's start)."""
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def set_dumpable(on: bool) -> bool:
    libc = _libc()
    return libc is not None and libc.prctl(PR_SET_DUMPABLE, int(on), 0, 0, 0) == 0


def drop_readers(keep: tuple = ()) -> str | None:
    """Take the capabilities in READERS (but `keep`) out of every set of this process;
    None, or why not all of it could be done (the bounding set needs CAP_SETPCAP)."""
    return _drop(keep, ("effective", "permitted", "inheritable"))


def bound_execs(keep: tuple = ()) -> str | None:
    """Every program this process starts from now on (the forkserver, a spawned child: an
    interpreter whose start-up runs site-packages' .pth files and the handler folder's
    modules before any of ours) starts without the capabilities in READERS but `keep`:
    they leave the bounding, inheritable and ambient sets; this process keeps its own
    effective and permitted ones. None, or why not all of it could be done."""
    return _drop(keep, ("inheritable",))


def _drop(keep: tuple, sets: tuple) -> str | None:
    """READERS but `keep` out of the ambient and bounding sets and of `sets`."""
    libc = _libc()
    if libc is None:
        return "no libc"
    caps = [n for name, n in READERS.items() if name not in keep]
    why = None
    for cap in caps:
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap, 0, 0)
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and why is None:
            why = f"bounding set: {os.strerror(ctypes.get_errno())}"
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return why or f"capget: {os.strerror(ctypes.get_errno())}"
    for cap in caps:
        word, bit = divmod(cap, 32)
        for name in sets:
            setattr(data[word], name, getattr(data[word], name) & ~(1 << bit) & 0xFFFFFFFF)
    if libc.capset(ctypes.byref(header), data) != 0:
        return why or f"capset: {os.strerror(ctypes.get_errno())}"
    return why


def account(user: str):
    """`user`'s password entry (a name or a uid); KeyError when there is none."""
    import pwd
    return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)


def check_user(user: str) -> None:
    """Can this process make a child run as `user`? Raises, saying why not (the parent
    asks before it starts anything, so the answer is one clear setup failure)."""
    try:
        entry = account(user)
    except (KeyError, ValueError, OverflowError):
        raise RuntimeError(f"cannot run as WORKER_CHILD_USER={user!r}: no such user") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise RuntimeError(f"cannot run as WORKER_CHILD_USER={user!r}: the worker runs as "
                           f"uid {os.geteuid()}, and only root can change user")


def become(user: str) -> None:
    """Run as `user` (a name or a uid) from here on: its uid, its group and supplementary
    groups, its HOME. Raises (a setup failure) when that cannot be done — never serves as
    root when asked not to. Already that user (the forkserver became it): only HOME."""
    entry = account(user)
    if (os.getuid(), os.geteuid()) != (entry.pw_uid, entry.pw_uid):
        os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = entry.pw_name


def drop_child_rights(keep: tuple = (), user: str = "") -> None:
    """A child's rights for this process (the forkserver, before it imports anything):
    the capabilities in READERS dropped but `keep`, WORKER_CHILD_USER, not dumpable.
    Raises when the user cannot be had."""
    drop_readers(keep)
    if user:
        become(user)
    set_dumpable(False)
