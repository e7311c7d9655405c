"""What makes a refresh and a take fast, checked by what happens rather than by a clock:
the SDK imported once in the forkserver, the parent's script never re-run in a child, a
source told at once when the worker can take a job again."""
import subprocess
import sys
import threading
import textwrap

from tests.support import FAST, HANDLERS, ROOT, Collector
from worker.config import Settings
from worker.parent import preloads
from worker.parent.supervisor import Supervisor
from worker.targets import ModuleTarget, ScriptTarget


def test_a_handler_written_for_the_sdk_gets_the_sdk_preloaded():
    assert preloads.implied(ScriptTarget(str(HANDLERS / "runpod_style.py"), [])) == ("runpod",)
    assert preloads.implied(ScriptTarget(str(HANDLERS / "imports_marker.py"), [])) == ()
    assert preloads.implied(ModuleTarget("no_such_module_here", [])) == ()
    sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "runpod_style.py"), []))
    sup.start()
    try:
        got = Collector()
        sup.submit({"id": "a", "input": {"prompt": "hi"}}, got)
        assert got.wait(["a"])["a"].output["prompt"] == "hi"
        assert "runpod" in sup.snapshot()["child"]["preloaded"]   # imported before the fork
    finally:
        sup.stop()
        sup.join(30)


def test_the_parents_script_is_not_run_again_in_the_child(tmp_path):
    """multiprocess re-runs the parent's __main__ in each child; ours skip it."""
    marker = tmp_path / "ran"
    script = tmp_path / "embed.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        with open({str(marker)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        from tests.support import FAST, HANDLERS, Collector
        from worker.config import Settings
        from worker.parent.supervisor import Supervisor
        from worker.targets import ScriptTarget
        if __name__ == "__main__":
            sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "edges.py"), []))
            sup.start()
            got = Collector()
            sup.submit({{"id": "a", "input": {{"do": "echo"}}}}, got)
            print(got.wait(["a"])["a"].state.value)
            sup.stop(); sup.join(30)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "COMPLETED" in proc.stdout, proc.stderr
    assert len(marker.read_text().split()) == 1       # the parent alone ran the script


def test_a_source_hears_at_once_when_a_fresh_child_can_take_jobs():
    sup = Supervisor(Settings(**FAST), ScriptTarget(str(HANDLERS / "edges.py"), []))
    capacities = []
    changed = threading.Event()

    def watcher():
        capacities.append(sup.status.capacity)
        changed.set()
    sup.on_capacity(watcher)
    sup.start()
    try:
        assert changed.wait(30) and capacities[-1] == 1          # the first child is ready
        changed.clear()
        sup.refresh("test")
        assert changed.wait(30) and capacities[-1] == 0          # replacing it
        changed.clear()
        assert changed.wait(30) and capacities[-1] == 1          # the new one is ready
    finally:
        sup.stop()
        sup.join(30)
