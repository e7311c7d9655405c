"""The CPU image as a user runs it (and the GPU image without a GPU): the official client
against the container's local API, `docker stop` with jobs running, HEALTHCHECK, the
user, the one-shot test's exit code, a refresh, and the RunPod queue on loopback."""
import json
import threading

import pytest

from docker_tests.containers import GPU_IMAGE, IMAGE, MOUNT, docker, unusable
from tests.fake_runpod import FakeRunPod
from tests.support import Hook

HANDLER = f"{MOUNT}/handler.py"
WORKER_UID = "1000"

pytestmark = pytest.mark.skipif(unusable(IMAGE) is not None, reason=str(unusable(IMAGE)))


def test_the_official_client_drives_the_containers_local_api(container):
    runpod = pytest.importorskip("runpod")
    c = container(f"{MOUNT}/stream_handler.py")
    c.wait_api()
    saved = runpod.endpoint_url_base
    runpod.endpoint_url_base = f"{c.url}/v2"
    try:
        ep = runpod.Endpoint("local", api_key="anything")
        assert ep.run_sync({"n": 2}, timeout=60) == [{"i": 0}, {"i": 1}]
        job = ep.run({"n": 3, "gap": 0.2})
        assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
        assert list(job.stream()) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert job.output(timeout=60) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert job.status() == "COMPLETED"
        long = ep.run({"n": 100, "gap": 0.5})
        c.until(lambda: long.status() == "IN_PROGRESS", what="the long job running")
        long.cancel()
        c.until(lambda: long.status() == "CANCELLED", what="the long job cancelled")
        assert ep.run_sync({"n": 1}, timeout=60) == [{"i": 0}]
    finally:
        runpod.endpoint_url_base = saved


def test_every_process_in_the_container_runs_as_the_worker_user(container):
    c = container(HANDLER)
    c.wait_api()
    out = c.post("/runsync", {"input": {"do": "echo"}}).json()["output"]
    assert str(out["uid"]) == WORKER_UID, out
    top = docker("top", c.name, "-eo", "uid,pid,args")
    rows = top.stdout.splitlines()[1:]
    assert len(rows) >= 3, top.stdout + top.stderr   # tini, the worker, its child (and forkserver)
    assert {row.split()[0] for row in rows} == {WORKER_UID}, rows
    assert rows[0].split()[2:5] == ["tini", "-s", "--"]


def _runsync_in_background(c, body):
    box = {}

    def go():
        try:
            box["answer"] = c.post("/runsync", body)
        except Exception as exc:      # noqa: BLE001 - the test reads it
            box["answer"] = exc
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, box


def _running(c, n):
    return c.until(lambda: c.health()["jobs"]["inProgress"] == n, what=f"{n} job(s) running")


def test_a_job_within_the_grace_finishes_at_docker_stop_and_is_answered(container):
    c = container(HANDLER)
    c.wait_api()
    thread, box = _runsync_in_background(c, {"input": {"do": "sleep", "seconds": 3}})
    _running(c, 1)
    took = c.stop()                                     # Docker's default: 10 s
    thread.join(30)
    answer = box["answer"]
    assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED", answer.text
    assert c.exit_code() == 0 and took < 10, (took, c.logs())
    assert c.state(".State.OOMKilled") == "false"


def test_a_job_longer_than_dockers_stop_timeout_is_answered_failed(container):
    """Docker kills after 10 s by default: the worker's grace in the image ends before
    that, and a job still running is answered FAILED to the client that waits (/runsync)
    and to the one that gave a webhook, even from a child that ignores every
    interruption (stopped by SIGKILL at the last step); the container exits 0 in time."""
    hook = Hook()
    c = container(HANDLER, env={"WORKER_CHILDREN": "2"})
    c.wait_api()
    thread, box = _runsync_in_background(c, {"input": {"do": "sleep", "seconds": 60}})
    job = c.post("/run", {"input": {"do": "swallow", "seconds": 60},
                          "webhook": hook.url}).json()["id"]
    _running(c, 2)
    took = c.stop()
    thread.join(30)
    answer = box["answer"]
    assert answer.status_code == 200, answer
    assert answer.json()["status"] == "FAILED" and "shutdown" in answer.json()["error"]
    _, posted = hook.wait(1)[0]
    assert posted["id"] == job and posted["status"] == "FAILED"
    assert "shutdown" in posted["error"]
    assert c.exit_code() == 0 and took < 10, (took, c.logs())


def _last_check_saying(c, text):
    """The last health check's record once its output says `text` (a set-up is first
    seen unfinished: unhealthy too once the start period is over)."""
    log = json.loads(c.state("json .State.Health.Log") or "[]")
    return log[-1] if log and text in log[-1]["Output"] else None


HEALTH_FAST = ("--health-interval=1s", "--health-timeout=5s", "--health-retries=2",
               "--health-start-period=1s")


def test_the_healthcheck_turns_healthy_when_the_worker_can_run_jobs(container):
    c = container(HANDLER, docker_args=HEALTH_FAST)
    c.until(lambda: c.state(".State.Health.Status") == "healthy", what="healthy")


def test_the_healthcheck_turns_unhealthy_when_the_worker_cannot_run_jobs(container):
    c = container(f"{MOUNT}/broken_handler.py", docker_args=HEALTH_FAST)
    c.until(lambda: c.state(".State.Health.Status") == "unhealthy", what="unhealthy")
    last = c.until(lambda: _last_check_saying(c, "model weights not found"),
                   what="the check naming the set-up's error")
    assert last["ExitCode"] == 1


def test_the_one_shot_test_exits_0_and_1_on_a_failing_input():
    """The image's own command: the embeddings example's test_input.json, a real model."""
    ok = docker("run", "--rm", "--network", "host", IMAGE, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert '"dimensions": 384' in ok.stdout
    bad = docker("run", "--rm", "--network", "host", IMAGE, "handler.py", "--test_input",
                 '{"input": {}}', timeout=300)
    assert bad.returncode == 1, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert "input needs 'text'" in bad.stdout + bad.stderr


def test_a_refresh_inside_the_container_gives_the_next_job_a_new_child(container):
    c = container(HANDLER)
    c.wait_api()
    first = c.post("/runsync", {"input": {"do": "refresh"}}).json()
    assert first["status"] == "COMPLETED", first
    old = first["output"]["pid"]
    nxt = c.post("/runsync", {"input": {"do": "echo"}}).json()
    assert nxt["status"] == "COMPLETED" and nxt["output"]["pid"] != old, nxt


def test_the_runpod_queue_mode_against_the_stand_in_queue(container):
    with FakeRunPod() as queue:
        c = container(HANDLER, env=queue.env("docker-w1"), api=False)
        queue.add_jobs([{"id": "echo", "input": {"do": "echo", "x": 1}},
                        {"id": "sleep", "input": {"do": "sleep", "seconds": 0.5}},
                        {"id": "fail", "input": {"do": "fail"}}])
        finals = queue.wait_final(["echo", "sleep", "fail"], timeout=120)
        assert finals["echo"]["output"]["echo"] == {"do": "echo", "x": 1}, finals
        assert finals["sleep"]["output"]["slept"] == 0.5, finals
        assert "asked to fail" in finals["fail"]["error"], finals
        assert c.stop() < 10 and c.exit_code() == 0, c.logs()


@pytest.mark.skipif(unusable(GPU_IMAGE) is not None, reason=str(unusable(GPU_IMAGE)))
def test_the_gpu_image_without_a_gpu_is_unhealthy_with_one_clear_line(container):
    line = "WORKER_CHECKS=require_gpu but no GPU is visible"
    c = container(image=GPU_IMAGE, docker_args=HEALTH_FAST, env={
        "WORKER_PRELOAD": "torch,sentence_transformers"})
    c.until(lambda: c.state(".State.Health.Status") == "unhealthy", what="unhealthy",
            timeout=120)
    c.until(lambda: _last_check_saying(c, line), what="the check naming the GPU", timeout=120)
    assert "Traceback" not in c.logs()
    once = docker("run", "--rm", "--network", "host", GPU_IMAGE, timeout=300)
    assert once.returncode == 1 and line in once.stderr, once.stderr[-2000:]


def test_a_webhook_receiver_that_hangs_does_not_make_docker_kill_the_worker(container):
    """A receiver that takes the connection and never answers: its tries end with the
    stop's budget, the log says so, and the container exits 0 within Docker's 10 s."""
    import socket
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    try:
        c = container(HANDLER)
        c.wait_api()
        job = c.post("/run", {"input": {"do": "echo"}, "webhook":
                              f"http://127.0.0.1:{hang.getsockname()[1]}/hook"}).json()["id"]
        c.until(lambda: c.post(f"/status/{job}", {}).json()["status"] == "COMPLETED",
                what="the job completed")
        c.stop()                        # Docker's default: SIGKILL (exit 137) at 10 s
        assert c.exit_code() == 0, c.logs()
        assert "webhooks still trying at the end of the stop's budget" in c.logs()
    finally:
        hang.close()
