"""Real public workers' shapes, run as their users run them: what the runpod SDK does
around each job, both ways a script starts, RunPodLogger levels, fitness checks, atexit."""
import json

import pytest

from tests.fake_runpod import FakeRunPod
from tests.support import HANDLERS, PYTHON, Harness, Worker, gone, run_cli


# --- rp_debugger (runpod-workers/worker-faster_whisper times its steps) --------------------

@pytest.mark.parametrize("helpers", ["sdk", "ours"])
@pytest.mark.parametrize("debugger", [False, True], ids=["plain", "rp_debugger"])
def test_debugger_checkpoints_are_cleared_after_every_job(helpers, debugger):
    h = Harness("timed_steps.py", argv=["ours"] if helpers == "ours" else [],
                rp_debugger=debugger)
    try:
        results = [h.run({"text": "one two three"}) for _ in range(3)]
    finally:
        h.close()
    for result in results:      # without the clear, job 2 raises 'Checkpoint … exists'
        assert result.state.value == "COMPLETED", result.body
        output = result.body["output"]
        assert output["words"] == 3
        if debugger:
            report = output["rp_debugger"]
            names = [t["name"] for t in report["timestamps"]]
            assert sorted(names) == ["tokenize", "transcribe"]   # this job's, only
            assert all(t["duration_ms"] >= 0 for t in report["timestamps"])
            assert report["system_info"]["python_version"]
            assert report["ready_delay_ms"] >= 0
        else:
            assert "rp_debugger" not in output


def test_rp_debugger_flag_on_the_command_line():
    proc = run_cli([PYTHON, str(HANDLERS / "timed_steps.py"), "ours", "--rp_debugger",
                    "--test_input", json.dumps({"input": {"text": "a b"}})])
    assert proc.returncode == 0, proc.stderr
    assert '"rp_debugger"' in proc.stdout and '"transcribe"' in proc.stdout


# --- entry points (runpod-workers/worker-vllm: main() under a __main__ guard) --------------

def _queue_run(tmp_path, handler, entry):
    runs = tmp_path / "runs"
    runs.write_text("")
    with FakeRunPod() as queue:
        worker = Worker(queue, handler, tmp_path, entry=entry, RUNS_FILE=runs)
        queue.add_jobs([{"id": f"j{i}", "input": {}} for i in range(3)])
        finals = queue.wait_final(["j0", "j1", "j2"])
        sizes = {int(q["batch_size"][0]) for q, _ in queue.takes if "batch_size" in q}
        code = worker.stop()
    return runs.read_text().splitlines(), finals, sizes, code, worker.text()


@pytest.mark.parametrize("entry", ["script", "module"])
def test_main_under_a_guard_runs_once_in_the_child(tmp_path, entry):
    lines, finals, sizes, code, log = _queue_run(tmp_path, "main_guard.py", entry)
    assert code == 0, log
    tops = [l for l in lines if l.startswith("top")]
    mains = [l.split() for l in lines if l.startswith("main")]
    assert len(tops) == 1 and len(mains) == 1, lines      # the top level ran exactly once
    child_pid, server_pid = int(mains[0][1]), int(mains[0][3])
    for result in finals.values():       # main() ran in the child that serves the jobs
        assert result["output"] == {"server_pid": server_pid, "worker_pid": child_pid}
    assert sizes == {8}, "the lambda concurrency_modifier (8) asks for batches of 8"
    assert gone(server_pid), "the subprocess main() started outlived the worker"


@pytest.mark.parametrize("entry", ["script", "module"])
def test_import_inside_main_still_serves_the_script(tmp_path, entry):
    """`import worker` after main() has started its subprocess: too late to hand over
    before the script ran, so (under `python script.py`) it runs again in the child and
    the first run's subprocess is ended rather than orphaned."""
    lines, finals, _, code, log = _queue_run(tmp_path, "late_import.py", entry)
    assert code == 0, log
    servers = [int(l.split()[3]) for l in lines if l.startswith("main")]
    assert len(servers) == (2 if entry == "script" else 1), lines
    assert all(r["output"] == {"server_pid": servers[-1]} for r in finals.values())
    assert all(gone(pid) for pid in servers), "a subprocess outlived the worker"
    if entry == "script":
        assert "put `import worker` at the top of the script" in log


@pytest.mark.parametrize("entry", ["script", "module"])
def test_the_top_level_runs_once_in_a_one_shot(tmp_path, entry):
    runs = tmp_path / "runs"
    script = tmp_path / "counted.py"
    script.write_text("import os\nimport worker as runpod\n"
                      "open(os.environ['RUNS_FILE'], 'a').write(f'{os.getpid()}\\n')\n"
                      "runpod.serverless.start({'handler': lambda job: 'ok'})\n")
    head = [PYTHON] if entry == "script" else [PYTHON, "-m", "worker"]
    proc = run_cli([*head, str(script), "--test_input", '{"input": {}}'],
                   env={"RUNS_FILE": str(runs)})
    assert proc.returncode == 0, proc.stderr
    assert len(runs.read_text().split()) == 1


def test_start_fills_rp_args_as_the_sdk(tmp_path):
    script = tmp_path / "args.py"
    script.write_text("import worker as runpod\n"
                      "config = {'handler': lambda job: config['rp_args']}\n"
                      "runpod.serverless.start(config)\n")
    proc = run_cli([PYTHON, str(script), "--rp_debugger", "--test_input",
                    '{"input": {"x": 1}}'])
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout[proc.stdout.index("{"):])
    args = body["output"]
    assert args["test_input"] == {"input": {"x": 1}} and args["rp_debugger"] is True
    assert set(args) == {"rp_log_level", "rp_debugger", "rp_serve_api", "rp_api_port",
                         "rp_api_concurrency", "rp_api_host", "test_input"}


def test_a_script_that_only_imports_the_package_is_not_handed_over(tmp_path):
    """Tools and benchmarks import worker's modules without calling start()."""
    script = tmp_path / "tool.py"
    script.write_text("import os\nimport worker\nfrom worker.config import Settings\n"
                      "print('tool ran', os.getpid(), Settings().stop_grace)\n")
    proc = run_cli([PYTHON, str(script)])
    assert proc.returncode == 0, proc.stderr
    assert "tool ran" in proc.stdout and "gpu-worker" not in proc.stderr


# --- RunPodLogger -------------------------------------------------------------------------

@pytest.mark.parametrize("helpers", ["sdk", "ours"])
@pytest.mark.parametrize("endpoint", [False, True], ids=["text", "json"])
def test_runpod_logger_lines_keep_their_level(helpers, endpoint):
    env = {"RUNPOD_ENDPOINT_ID": "ep"} if endpoint else {}
    proc = run_cli([PYTHON, "-m", "worker", str(HANDLERS / "sdk_logger.py"),
                    *(["ours"] if helpers == "ours" else []), "--rp_log_level", "DEBUG",
                    "--test_input", '{"id": "req-1", "input": {}}'], env=env)
    assert proc.returncode == 0, proc.stderr
    got = set()
    for line in proc.stderr.splitlines():
        if endpoint:
            if line.startswith("{"):
                record = json.loads(line)       # one JSON line, not JSON inside JSON
                got.add((record["level"], record["message"], record["requestId"]))
        elif " line" in line:
            head, _, rest = line.partition(" worker.child | ")
            got.add((head.split()[-1], rest, None))
    levels = ["DEBUG", "INFO", "WARN", "ERROR"] if endpoint else \
        ["DEBUG", "INFO", "WARNING", "ERROR"]
    messages = ["a debug line", "an info line", "a warn line", "an error line"]
    expected = {(lv, msg, "req-1") if endpoint else (lv, f"req-1 | {msg}", None)
                for lv, msg in zip(levels, messages)}
    assert expected <= got, proc.stderr


# --- fitness checks -----------------------------------------------------------------------

SKIP_SDK_SYSTEM = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}


@pytest.mark.parametrize("helpers", ["sdk", "ours"])
@pytest.mark.parametrize("fail", [None, "fail-sync", "fail-async"])
def test_fitness_checks_on_the_queue(tmp_path, helpers, fail):
    args = (["ours"] if helpers == "ours" else []) + ([fail] if fail else [])
    with FakeRunPod() as queue:
        queue.add_jobs([{"id": "j1", "input": {}}])
        worker = Worker(queue, "fitness.py", tmp_path, args=args, **SKIP_SDK_SYSTEM)
        if fail is None:
            assert queue.wait_final(["j1"])["j1"] == {"output": "fit"}
            code = worker.stop()
            assert code == 0, worker.text()
            assert "2 fitness check(s) passed" in worker.text()
            return
        code = worker.proc.wait(60)
        pings = [q for q in queue.pings if q.get("status") == ["unhealthy"]]
        log = worker.text()
    assert code == 1, log
    name, reason = {"fail-sync": ("disk_has_model", "RuntimeError: model file not found"),
                    "fail-async": ("backend_answers",
                                   "ConnectionError: backend did not answer")}[fail]
    assert f"fitness check {name} failed: {reason}" in log
    assert "Traceback" not in log.split("fitness check")[-1]     # one clear line
    assert pings and reason in pings[0]["reason"][0] and pings[0]["check"] == [name]
    assert not queue.finals, "an unfit worker took no job"


def test_fitness_checks_do_not_run_in_the_local_test_unless_asked():
    base = [PYTHON, str(HANDLERS / "fitness.py"), "ours", "fail-sync",
            "--test_input", '{"input": {}}']
    assert run_cli(base).returncode == 0                  # as the SDK: production only
    forced = run_cli(base, env={"WORKER_CHECKS": "on"})
    assert forced.returncode == 1 and "fitness check disk_has_model failed" in forced.stderr


def test_fitness_checks_run_once_per_worker_not_per_child(monkeypatch):
    from worker.parent import mp_launcher
    # The forkserver preloads runpod (fitness.py imports it), so the SDK's system checks
    # would run: its network check dials 8.8.8.8 (tests/loopback_only refuses it).
    for name, value in SKIP_SDK_SYSTEM.items():
        monkeypatch.setenv(name, value)
    mp_launcher.stop_template()        # a forkserver started earlier keeps its environment
    lines = []
    h = Harness("fitness.py", argv=["ours"], checks="on",
                sink=lambda stream, line, ids: lines.append(line))
    try:
        first = h.run({})
        pid = h.sup.status.child_pid
        h.sup.refresh()
        second = h.listener.wait([h.submit({})])
        assert h.sup.status.child_pid != pid
        h.sup.stop()
        assert h.sup.join(30)        # the output pump has read everything
    finally:
        h.close()
        mp_launcher.stop_template()    # nor does a later test get this one's
    assert first.body == {"output": "fit"} and list(second.values())[0].body == first.body
    assert lines.count("check: disk_has_model ran") == 1, lines


# --- atexit -------------------------------------------------------------------------------

def test_atexit_hooks_run_on_refresh_and_on_shutdown(tmp_path):
    hooks = tmp_path / "hooks"
    h = Harness("exit_hook.py", argv=[str(hooks)])
    try:
        first = h.run({"refresh": True}).body["output"]["pid"]
        second = h.run({}).body["output"]["pid"]
        assert second != first
        assert gone(first)
    finally:
        h.close()
    assert gone(second)
    assert hooks.read_text().splitlines() == [f"synced {first}", f"synced {second}"]


def test_the_gpu_check_expects_no_gpu_here_and_none_when_hidden(monkeypatch):
    """The GPU path itself is in gpu_tests/test_gpu_fitness.py."""
    from worker.child import gpu_check
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_check.expected() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import pynvml
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here: a GPU machine runs gpu_tests/")
    except pynvml.NVMLError:
        assert gpu_check.expected() == 0


def test_what_ran_before_the_handover_is_not_orphaned(tmp_path):
    """A subprocess started above `import worker` would survive the exec: it is ended,
    and the script starts it again in the child, which owns it."""
    runs = tmp_path / "runs"
    script = tmp_path / "early.py"
    script.write_text("import os, subprocess, sys\n"
                      "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                      "open(os.environ['RUNS_FILE'], 'a').write(f'{p.pid}\\n')\n"
                      "import worker as runpod\n"
                      "runpod.serverless.start({'handler': lambda job: 'ok'})\n")
    proc = run_cli([PYTHON, str(script), "--test_input", '{"input": {}}'],
                   env={"RUNS_FILE": str(runs)})
    assert proc.returncode == 0, proc.stderr
    pids = [int(p) for p in runs.read_text().split()]
    assert len(pids) == 2 and "ending 1 process(es)" in proc.stderr
    assert all(gone(pid) for pid in pids)
