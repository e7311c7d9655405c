"""A handler never gets more than a child's rights (issue 35), tried as a hostile handler
would with real workers on a stand-in queue:
- only the parent can ask the forkserver for a process: a handler that connects to its
  socket and asks (plain, or after a 3.14-style handshake with a key found in its own
  memory) gets no process, its payload never runs, the refusal is logged, the worker goes on;
- a warm import (WORKER_WARM_REFRESH) runs with a child's rights: as WORKER_CHILD_USER when
  set, without the capabilities that read the worker's /proc files, so module-level code
  finds no secret.
"""
import uuid

import pytest

from tests.fake_runpod import FakeRunPod
from tests.support import Worker

READERS = (1 << 19) | (1 << 21) | (1 << 38)     # SYS_PTRACE, SYS_ADMIN, PERFMON


def test_a_handler_that_asks_the_forkserver_for_a_process_gets_nothing(tmp_path):
    key, token = f"key-{uuid.uuid4()}", f"token-{uuid.uuid4()}"
    loot = tmp_path / "loot"
    loot.mkdir()
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "forkserver_asker.py", tmp_path, WORKER_API_TOKEN=token)
        try:
            q.add_jobs([{"id": "ask", "input": {"dir": str(loot)}}])
            out = q.wait_final(["ask"], 60)["ask"]["output"]
            # The worker goes on: the next job runs in the same child, as usual.
            q.add_jobs([{"id": "again", "input": {"dir": str(loot)}}])
            again = q.wait_final(["again"], 60)["again"]
        finally:
            assert w.stop() == 0, w.text()
    assert out["addresses"] >= 1, out            # it found the socket: the door was tried
    assert {t["mode"] for t in out["tries"]} == {"plain", "handshake"}
    for attempt in out["tries"]:
        assert attempt["pid"] is None and not attempt["marker"], (attempt, w.text())
    assert list(loot.iterdir()) == []
    assert again["status"] == "COMPLETED" if "status" in again else again.get("output")
    log = w.text()
    assert key not in log and token not in log
    refused = [line for line in log.splitlines() if "forkserver refused" in line]
    assert refused, log
    assert len(refused) == 1, refused           # logged once per peer


@pytest.mark.parametrize("user", ["", "nobody"], ids=["root", "nobody"])
def test_a_warm_import_runs_with_a_childs_rights(tmp_path, user):
    key, token = f"hunted-secret-key-{uuid.uuid4()}", f"hunted-secret-token-{uuid.uuid4()}"
    with FakeRunPod(long_poll=0.3, api_key=key) as q:
        w = Worker(q, "warm_hunter.py", tmp_path, WORKER_API_TOKEN=token,
                   WORKER_WARM_REFRESH="true", WORKER_CHILD_USER=user)
        try:
            q.add_jobs([{"id": "hunt", "input": {}}])
            out = q.wait_final(["hunt"], 60)["hunt"]["output"]
        finally:
            assert w.stop() == 0, w.text()
    assert out["warm"], (out, w.text())          # the module was imported in the forkserver
    assert out["found"] == [] and out["found_now"] == [], out
    assert out["uid"] == (65534 if user else 0), out
    for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert not int(out["caps"][name], 16) & READERS, (name, out["caps"])


def test_what_runs_at_the_forkservers_start_has_no_reading_capability(tmp_path):
    """Code that runs when the forkserver's interpreter starts, before any of the worker's
    modules (a sitecustomize on PYTHONPATH here; a package's .pth file, or a module a root
    child wrote where the interpreter looks, would run the same way): the worker starts
    every program without SYS_PTRACE, SYS_ADMIN and PERFMON, so it has none of them."""
    import json
    import os
    site = tmp_path / "site"
    site.mkdir()
    seen = tmp_path / "seen"
    seen.mkdir()
    (site / "sitecustomize.py").write_text(
        "import json, os\n"
        "caps = {k: v.strip() for k, v in (l.split(':', 1) for l in "
        "open('/proc/self/status')) if k.startswith('Cap')}\n"
        "argv = open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        f"open(os.path.join({str(seen)!r}, str(os.getpid())), 'w').write("
        "json.dumps({'caps': caps, 'argv': argv}))\n"
        "import loopback_guard\n")       # the suite's guard (tests/loopback_only), shadowed
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "hunter.py", tmp_path, PYTHONPATH=path)
        try:
            q.add_jobs([{"id": "one", "input": {"values": ["nothing"]}}])
            q.wait_final(["one"], 60)
        finally:
            assert w.stop() == 0, w.text()
    starts = [json.loads(p.read_text()) for p in seen.iterdir()]
    forkservers = [s for s in starts if "forkserver" in s["argv"]]
    assert forkservers, [s["argv"] for s in starts]
    for start in forkservers:
        for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
            assert not int(start["caps"][name], 16) & READERS, (name, start)


ASK_AS = """
import json, os, sys
sys.path.insert(0, sys.argv[4])
want = int(sys.argv[3])
if os.getpid() != want:
    print(json.dumps({"reused": False})); sys.exit(0)
from forkserver_ask import ask
print(json.dumps({"reused": True, **ask(sys.argv[1], "plain", sys.argv[2], os.getpid())}))
"""


def test_once_the_worker_is_dead_its_pid_opens_no_door(tmp_path):
    """A process the worker's child left behind keeps the forkserver alive after the worker
    died (it holds the forkserver's "alive" pipe), and a process that takes the dead
    worker's pid asks it for a process: refused (the forkserver was adopted, so the pid is
    not its parent's any more). The pid is taken for real: ns_last_pid set just below it."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    import psutil
    handlers = str(Path(__file__).parent / "handlers")
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    if not os.access(last_pid, os.W_OK):
        pytest.skip("ns_last_pid is not writable here: a pid cannot be taken on purpose")
    with FakeRunPod(long_poll=0.3) as q:
        w = Worker(q, "alive_holder.py", tmp_path)
        q.add_jobs([{"id": "hold", "input": {}}])
        out = q.wait_final(["hold"], 60)["hold"]["output"]
        assert isinstance(out["holder"], int) and out["holder"] > 1, out
        holder = psutil.Process(out["holder"])
        forkserver = [p for p in psutil.Process(w.proc.pid).children()
                      if "forkserver" in " ".join(p.cmdline())]
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait(30)
    marker = tmp_path / "marker"
    try:
        assert out["worker"] == w.proc.pid and out["addresses"] and forkserver, out
        result = {"reused": False}
        for _ in range(50):
            last_pid.write_text(str(w.proc.pid - 1))
            ran = subprocess.run([sys.executable, "-c", ASK_AS, out["addresses"][0],
                                  str(marker), str(w.proc.pid), handlers],
                                 capture_output=True, text=True, timeout=60)
            result = json.loads(ran.stdout or "{}") or {"reused": False}
            if result["reused"]:
                break
        assert result["reused"], "the dead worker's pid could not be taken"
        assert forkserver[0].is_running(), "the forkserver did not outlive the worker"
        assert result["pid"] is None and not marker.exists(), result
    finally:
        for proc in (holder, *forkserver):
            try:
                proc.kill()
            except psutil.Error:
                pass


SHADOW = '''
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open("/proc/self/status") as f:
    caps = [l.split()[1] for l in f if l.startswith("CapEff")][0]
secret = any(v.startswith("hunted-secret-") for v in os.environ.values())
with open(os.path.join(here, "ran.txt"), "a") as f:
    f.write(f"{__name__} {os.getpid()} {os.getuid()} {caps} {secret}\\n")
name = __name__
del sys.modules[name]
saved = sys.path[:]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
try:
    real = __import__(name)
finally:
    sys.path[:] = saved
sys.modules[name] = real
'''
SHADOWED = ("multiprocess", "psutil", "ast", "zipfile", "subprocess", "uvicorn", "json",
            "selectors")


@pytest.mark.parametrize("how", ["-m worker", "-mworker", "python handler.py",
                                 "PYTHONPATH trailing colon", "the worker command"])
def test_files_beside_the_handler_never_run_with_more_than_a_childs_rights(tmp_path, how):
    """Modules shipped beside the handler, in the folder the worker starts in (`cd app &&
    python -m worker handler.py`, as the docs show), named like modules the worker and its
    hand-over import: none runs where the secrets or the capabilities that read them are —
    the worker runs with -P (re-executed at once, however -m was spelt; `python
    handler.py` hands over importing nothing a file there could shadow; a PYTHONPATH's
    empty entry dropped). A child may import them: it has a child's rights."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    folder = tmp_path / "app"
    folder.mkdir()
    for name in SHADOWED:
        (folder / f"{name}.py").write_text(SHADOW)
    (folder / "handler.py").write_text(
        "import worker\nworker.start({'handler': lambda job: 'ok'})\n")
    token = f"hunted-secret-{uuid.uuid4()}"
    args = {"-m worker": ["-m", "worker", "handler.py"], "-mworker": ["-mworker", "handler.py"],
            "python handler.py": ["handler.py"],
            "PYTHONPATH trailing colon": ["-m", "worker", "handler.py"],
            "the worker command": [str(Path(sys.executable).parent / "worker"),
                                   "handler.py"]}[how]
    with FakeRunPod(long_poll=0.3) as q:
        env = {**os.environ, **q.env(), "WORKER_API_TOKEN": token,
               "WORKER_STOP_GRACE": "1", "WORKER_WARM_REFRESH": "true"}
        if how == "PYTHONPATH trailing colon":
            env["PYTHONPATH"] = str(tmp_path / "nothing") + ":"
        log = tmp_path / "worker.log"
        with open(log, "w") as out:
            head = [] if how == "the worker command" else [sys.executable]
            proc = subprocess.Popen([*head, *args], cwd=folder, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            q.add_jobs([{"id": "a", "input": {}}])
            assert q.wait_final(["a"], 60)["a"]["output"] == "ok", log.read_text()
        finally:
            proc.terminate()
            assert proc.wait(60) == 0, log.read_text()
    ran = (folder / "ran.txt").read_text().splitlines() if (folder / "ran.txt").exists() \
        else []
    for line in ran:
        name, pid, uid, caps, secret = line.split()
        assert secret == "False" and not int(caps, 16) & READERS, (ran, log.read_text())
