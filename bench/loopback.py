"""Nothing a benchmark runs leaves loopback (tests/loopback_only/loopback_guard.py, the
guard the test suite uses): `with loopback.only():` around a benchmark's main guards its
process and every Python process it starts (worker parents, children, gateways, the
stand-in queue, runpod-python's processes), and exits non-zero, naming each refusal, if
any was refused: figures taken while something dialled out are not figures of this
machine alone. Only the setting-up that must download (`outside`: pip installing the
SDK's virtualenv) runs without it."""
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "loopback_only"))
import loopback_guard  # noqa: E402


@contextlib.contextmanager
def only():
    if os.environ.get(loopback_guard.RECORD_ENV):   # started by a guarded benchmark
        yield                                       # (sitecustomize guards it): its record
        return
    folder = tempfile.mkdtemp(prefix="loopback-only-")
    os.chmod(folder, 0o755)                         # a child may run as another user
    record = os.path.join(folder, "refused")
    loopback_guard.enforce(record)
    try:
        yield
    finally:
        refused = loopback_guard.read(record)[0]
        if not refused:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"\nbench: {len(refused)} attempt(s) to leave loopback, refused "
                  f"(tests/loopback_only; the record: {record}); these figures do not "
                  "count:", file=sys.stderr)
            for r in refused:
                print(loopback_guard.describe(r), file=sys.stderr)
            raise SystemExit(3)


def env_with(*folders) -> dict:
    """The guard's variables, with PYTHONPATH naming `folders` first (another tree's
    worker): for a process started with an environment of its own."""
    path = [*map(str, folders), os.environ.get("PYTHONPATH", "")]
    return {loopback_guard.RECORD_ENV: os.environ.get(loopback_guard.RECORD_ENV, ""),
            "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def outside(env: dict) -> dict:
    """`env` without the guard, for a step that must reach the network (a download)."""
    env = dict(env)
    env.pop(loopback_guard.RECORD_ENV, None)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and p != loopback_guard.HERE]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    return env
