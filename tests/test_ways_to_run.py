"""Every way a Python user runs a script works as `python handler.py` does: a zipapp, a
folder with __main__.py, a script through a symlink (its __file__ as the user ran it),
`import worker` + `worker.start(...)` handed over before the script's code runs, and stdin
left to the script (a file read before `import worker` is read again from its start; a
pipe already drained is said)."""
import json
import os
import zipapp

from tests.support import PYTHON, oneshot_body, run_cli

SCRIPT = '''
import os
import sys
{before}
import worker
{after}
GREETING = "hello"
with open("runs.txt", "a") as f:                  # in the working directory
    f.write("run\\n")
def handler(job):
    return {{"greet": GREETING, "file": __file__, "text": TEXT}}
worker.start({{"handler": handler}})
'''
READS = "TEXT = sys.stdin.read()"
ONE = json.dumps({"input": {}})


def write(folder, before="", after=READS, name="handler.py"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(SCRIPT.format(before=before, after=after))
    return path


def test_a_zipapp_and_a_folder_run_with_their_module_level_names(tmp_path):
    app = write(tmp_path / "app", after='TEXT = None', name="__main__.py").parent
    zipapp.create_archive(app, tmp_path / "app.pyz")
    for target in (tmp_path / "app.pyz", app):
        proc = run_cli([PYTHON, str(target), "--test_input", ONE], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = oneshot_body(proc.stdout)["output"]
        assert out["greet"] == "hello" and out["file"].endswith("__main__.py")
        assert out["file"].startswith(str(target))


def test_a_script_run_through_a_symlink_keeps_its_file_and_its_neighbours(tmp_path):
    real = write(tmp_path / "real", after="TEXT = open(os.path.join(os.path.dirname("
                 "__file__), 'beside.txt')).read()")
    (tmp_path / "real" / "beside.txt").write_text("real")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "beside.txt").write_text("beside the link")
    os.symlink(real, tmp_path / "link" / "handler.py")
    proc = run_cli([PYTHON, str(tmp_path / "link" / "handler.py"), "--test_input", ONE],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = oneshot_body(proc.stdout)["output"]
    assert out["file"] == str(tmp_path / "link" / "handler.py")
    assert out["text"] == "beside the link"


def test_import_worker_then_worker_start_hands_over_before_the_script_runs(tmp_path):
    path = write(tmp_path / "s", after="TEXT = None")
    proc = run_cli([PYTHON, str(path), "--test_input", ONE], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "runs.txt").read_text() == "run\n"     # once: in the child
    assert "ran before handing over" not in proc.stderr


def test_stdin_is_left_to_the_script(tmp_path):
    path = write(tmp_path / "s")                      # reads stdin after `import worker`
    proc = run_cli([PYTHON, str(path), "--test_input", ONE], cwd=tmp_path,
                   input="from a pipe\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert oneshot_body(proc.stdout)["output"]["text"] == "from a pipe\n"


def test_stdin_read_before_import_worker_is_a_file_read_again_or_a_pipe_said(tmp_path):
    path = write(tmp_path / "s", before=READS, after="")
    data = tmp_path / "in.txt"
    data.write_text("from a file\n")
    with open(data) as stdin:
        import subprocess
        proc = subprocess.run([PYTHON, str(path), "--test_input", ONE], cwd=tmp_path,
                              stdin=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert oneshot_body(proc.stdout)["output"]["text"] == "from a file\n"
    piped = run_cli([PYTHON, str(path), "--test_input", ONE], cwd=tmp_path,
                    input="from a pipe\n")
    assert "read it before `import worker`" in piped.stderr, piped.stderr
