"""The two entry points, the one-shot local test and the drop-in for runpod handlers,
as a user runs them: real command lines."""
import json

import pytest

from tests.support import EXAMPLES, HANDLERS, PYTHON, oneshot_body, run_cli

# (example, test input, lines the run must print, expected exit code)
EXAMPLE_CASES = [
    ("standard.py", {"input": {"prompt": "hi"}}, ['"output": "echo: hi"'], 0),
    ("generator.py", {"input": {"count": 2}},
     ['chunk 1: "This is the 0 generated output."', 'chunk 2: "This is the 1 generated output."'],
     0),
    ("async_generator.py", {"input": {"count": 2, "delay": 0}},
     ['chunk 1: "Generated async token output 0"', 'chunk 2: "Generated async token output 1"'],
     0),
    ("async_handler.py", {"input": {"prompt": "x", "delay": 0}}, ['"echo": "x"'], 0),
    ("error_return.py", {"input": {}},
     ["FAILED (handler_error)", "error: Input is missing the 'seed' key"], 1),
    ("error_return.py", {"input": {"seed": 1}}, ['"output": "Input validation successful."'], 0),
    ("progress.py", {"input": {}},
     ['progress: "Update 0/3"', 'progress: "Update 2/3"', '"output": "done"'], 0),
    ("refresh_sync.py", {"input": {"count": 1}},
     ["refresh_worker: fresh worker process", '"Generated sync token output 0"'], 0),
    ("refresh_async.py", {"input": {"count": 1}},
     ["refresh_worker: fresh worker process", '"Generated async token output 0"'], 0),
]


@pytest.mark.parametrize("entry", ["script", "module"])
@pytest.mark.parametrize("example, job, expect, code", EXAMPLE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(EXAMPLE_CASES)])
def test_examples_through_both_entry_points(entry, example, job, expect, code):
    path = str(EXAMPLES / example)
    args = [path] if entry == "script" else ["-m", "worker", path]
    proc = run_cli([PYTHON, *args, "--test_input", json.dumps(job)], cwd=EXAMPLES)
    assert proc.returncode == code, proc.stdout + proc.stderr
    for line in expect:
        assert line in proc.stdout, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    chunk_lines = [l for l in lines if l.startswith("chunk ")]
    assert chunk_lines == sorted(chunk_lines)


def test_test_input_json_in_the_working_directory(tmp_path):
    (tmp_path / "test_input.json").write_text('{"input": {"prompt": "from the file"}}')
    proc = run_cli([PYTHON, str(EXAMPLES / "standard.py")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"output": "echo: from the file"' in proc.stdout


@pytest.mark.parametrize("args, cwd_file, message", [
    ([], None, "no test input"),
    (["--test_input", "{not json"], None, "--test_input is not valid JSON"),
    (["--test_input", '{"id": "x"}'], None, "has no 'input' key"),
    (["--test_input", "[1, 2]"], None, "must be a JSON object"),
    ([], "{broken", "test_input.json is not valid JSON"),
])
def test_bad_test_input_is_a_clear_error(tmp_path, args, cwd_file, message):
    if cwd_file is not None:
        (tmp_path / "test_input.json").write_text(cwd_file)
    proc = run_cli([PYTHON, "-m", "worker", str(EXAMPLES / "standard.py"), *args], cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_test_output_match_and_mismatch():
    base = [PYTHON, str(EXAMPLES / "standard.py"), "--test_input", '{"input": {"prompt": "a"}}']
    good = run_cli(base + ["--test_output", '"echo: a"'])
    assert good.returncode == 0 and "test_output: matches" in good.stdout
    bad = run_cli(base + ["--test_output", '"something else"'])
    assert bad.returncode == 1
    assert "test_output: MISMATCH" in bad.stdout and '"echo: a"' in bad.stdout


def test_handler_exception_is_printed_readably_and_exits_1():
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "misbehave.py"),
                    "--test_input", '{"input": {"do": "raise"}}'])
    assert proc.returncode == 1
    assert "error: <class 'ValueError'>: bad things happened" in proc.stdout
    assert "Traceback (most recent call last)" in proc.stdout


@pytest.mark.parametrize("entry", ["script", "module"])
def test_setup_failure_is_reported_once_and_exits_1(entry):
    path = str(HANDLERS / "raise_at_import.py")
    args = [path] if entry == "script" else ["-m", "worker", path]
    proc = run_cli([PYTHON, *args, "--test_input", '{"input": {}}'])
    assert proc.returncode == 1
    both = proc.stdout + proc.stderr
    assert both.count('raise RuntimeError("model weights missing")') == 1
    if entry == "module":   # as a script, the module fails before start() is reached
        assert "handler setup failed: RuntimeError: model weights missing" in proc.stderr


def test_unknown_flags_are_left_for_the_handler():
    proc = run_cli([PYTHON, str(HANDLERS / "misbehave.py"), "--test_input",
                    '{"input": {"do": "argv"}}', "--my_flag", "7", "--rp_log_level", "WARN"])
    assert proc.returncode == 0, proc.stderr
    assert oneshot_body(proc.stdout) == {"output": ["--my_flag", "7"]}
    assert "INFO" not in proc.stderr     # --rp_log_level was taken by the worker


def test_bad_setting_is_a_clear_error():
    proc = run_cli([PYTHON, "-m", "worker", str(EXAMPLES / "standard.py")],
                   env={"WORKER_JOB_TIMEOUT": "soon"})
    assert proc.returncode == 2
    assert "WORKER_JOB_TIMEOUT='soon' is not valid for job_timeout" in proc.stderr


def test_missing_handler_file():
    proc = run_cli([PYTHON, "-m", "worker", "no_such_handler.py"])
    assert proc.returncode == 2 and "handler file not found" in proc.stderr


def test_import_worker_stays_light():
    code = ("import sys, worker; "
            "print(sorted(m for m in ('torch', 'pynvml', 'multiprocess', 'worker.parent.supervisor') "
            "if m in sys.modules))")
    proc = run_cli([PYTHON, "-c", code])
    assert proc.stdout.strip() == "[]", proc.stderr


def test_script_entry_keeps_no_model_memory_in_the_parent():
    """`python handler.py` re-executes as the supervisor: the 300 MiB the module holds from
    import time lives in the child only."""
    proc = run_cli([PYTHON, str(HANDLERS / "big_import.py"), "--test_input", '{"input": {}}'])
    assert proc.returncode == 0, proc.stderr
    out = oneshot_body(proc.stdout)["output"]
    assert out["child_rss_mb"] > 300
    assert out["supervisor_rss_mb"] < 150


def test_runpod_sdk_handler_is_redirected_into_a_child():
    """An unchanged RunPod worker (imports the official runpod package) under
    `python -m worker`: start() and progress_update() are gpu-worker's."""
    pytest.importorskip("runpod")
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "runpod_style.py"),
                    "--test_input", '{"input": {"prompt": "sdk"}}'])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'progress: "halfway"' in proc.stdout
    out = oneshot_body(proc.stdout)["output"]
    assert out["prompt"] == "sdk"
    assert f"child {out['pid']} ready" in proc.stderr     # it ran in our child process
    assert "Starting Serverless Worker" not in proc.stdout   # the SDK's start() never ran


def test_handler_defined_without_a_file_crosses_by_value():
    code = ("import worker\n"
            "def handler(job):\n"
            "    return {'doubled': job['input']['n'] * 2}\n"
            "worker.start({'handler': handler})\n")
    proc = run_cli([PYTHON, "-c", code, "--test_input", '{"input": {"n": 21}}'])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"doubled": 42' in proc.stdout


def test_preload_modules_are_in_the_child_before_it_starts(harness):
    h = harness("misbehave.py", preload=("xml.dom.minidom",))
    assert h.sup.wait_ready(30)
    # the child reports which preload modules were already imported when it began
    assert h.sup.snapshot()["child"]["preloaded"] == ["xml.dom.minidom"]
    assert h.run({"do": "ok"}).output["calls"] == 1
    h.close()
    plain = harness("misbehave.py")
    assert plain.sup.wait_ready(30)
    assert plain.sup.snapshot()["child"]["preloaded"] == []


def test_the_parent_never_imports_the_handler_module(harness):
    import sys
    h = harness("imports_marker.py")
    assert h.run({}).output == "marker loaded"
    assert "child_only_marker" not in sys.modules


def test_spawn_start_method_works_too(harness):
    h = harness("misbehave.py", start_method="spawn")
    first = h.run({"do": "ok"})
    assert h.run({"do": "refresh"}).refresh
    assert h.run({"do": "ok"}).output["pid"] != first.output["pid"]
