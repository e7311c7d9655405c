"""The fleet's deployment files (deploy/): no Docker engine or cluster runs here, so what
can be checked is: they parse, every variable they set is a real setting, every command
the image runs exists, the names KEDA watches are the worker's, and every dashboard query
names a metric the worker or the gateway exports."""
import json
import re

import yaml

from tests.support import ROOT
from worker.config import Settings, describe
from worker.fleet import gateway
from worker.fleet.gateway_metrics import GatewayMetrics
from worker.fleet.keys import GROUP, Keys

DEPLOY = ROOT / "deploy"
SETTINGS = {name for row in describe() for name in row["env"]}
OTHER_ENV = {"GF_AUTH_ANONYMOUS_ENABLED"}          # Grafana's own
STOP = Settings().stop_grace                       # each step of a child's stop
IMAGE_WORKDIR = ROOT / "examples" / "embeddings"   # the image's WORKDIR (docker/Dockerfile)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "fleet" / "compose.yaml").read_text())


def k8s() -> list:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "fleet.yaml").read_text()) if d]


def k8s_env(kind_name: str) -> dict:
    doc = next(d for d in k8s() if d["kind"] == "Deployment"
               and d["metadata"]["name"] == kind_name)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    return doc, container, {e["name"]: e["value"] for e in container["env"]}


def test_every_variable_set_is_a_real_setting():
    for name, service in compose()["services"].items():
        for var in service.get("environment", {}):
            assert var in SETTINGS or var in OTHER_ENV, f"compose {name}: {var}"
    for doc in k8s():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for env in container["env"]:
                    assert env["name"] in SETTINGS, f"k8s {doc['metadata']['name']}: {env}"


def test_every_command_the_image_runs_exists():
    services = compose()["services"]
    ours = [(n, s["command"]) for n, s in services.items() if s["image"].startswith("gpu-worker")]
    ours += [(d["metadata"]["name"], d["spec"]["template"]["spec"]["containers"][0]["args"])
             for d in k8s() if d["kind"] == "Deployment"]
    assert len(ours) == 4
    for name, args in ours:
        if args[0] == "gateway":
            ns = gateway.parser().parse_args(args[1:])      # exits on an unknown flag
            assert ns.host == "0.0.0.0" and ns.port == "8000", name
        else:
            assert (IMAGE_WORKDIR / args[0]).is_file(), f"{name}: {args}"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / "fleet" / source).exists(), f"{name}: {volume}"


def test_the_workers_and_keda_agree_on_the_stream_and_the_grace():
    doc, container, env = k8s_env("gpu-worker")
    keys = Keys(env["WORKER_ENDPOINT"])
    scaled = next(d for d in k8s() if d["kind"] == "ScaledObject")
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"].get("lagCount") is not None for t in triggers} == {True, False}
    for t in triggers:
        assert t["type"] == "redis-streams"
        assert t["metadata"]["stream"] == keys.stream
        assert t["metadata"]["consumerGroup"] == GROUP
    grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(env["WORKER_SHUTDOWN_GRACE"]) + 3 * STOP + 5
    _, _, gw_env = k8s_env("gpu-worker-gateway")
    assert gw_env["WORKER_ENDPOINT"] == env["WORKER_ENDPOINT"]
    worker = compose()["services"]["worker"]
    assert int(worker["stop_grace_period"].rstrip("s")) > \
        float(worker["environment"]["WORKER_SHUTDOWN_GRACE"]) + 3 * STOP + 5
    prom = yaml.safe_load((DEPLOY / "fleet" / "prometheus.yml").read_text())
    ports = {str(c["port"]) for job in prom["scrape_configs"] for c in job.get("dns_sd_configs", [])}
    assert ports == {worker["environment"]["WORKER_METRICS_PORT"]}


def exported() -> set:
    gateway_names = {m.name for m in GatewayMetrics().registry.collect()}
    source = (ROOT / "worker" / "parent" / "metrics.py").read_text()
    return gateway_names | set(re.findall(r'"(gpu_worker_[a-z_]+)"', source))


def test_every_dashboard_query_names_an_exported_metric():
    dash = json.loads((DEPLOY / "grafana" / "gpu-worker.json").read_text())
    names = exported()
    queries = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(queries) >= 10
    seen = set()
    for expr in queries:
        for metric in re.findall(r"\b(gpu_worker_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
            assert base in names, f"{metric} in {expr!r} is not exported"
            seen.add(base)
    # the list: queue depth, jobs by state, latency histograms, child starts by
    # cause, GPU memory per child
    assert {"gpu_worker_gateway_queue_depth", "gpu_worker_gateway_jobs",
            "gpu_worker_gateway_request_seconds", "gpu_worker_job_execution_seconds",
            "gpu_worker_child_starts", "gpu_worker_child_torch_reserved_bytes"} <= seen
