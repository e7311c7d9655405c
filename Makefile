# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run oneshot test bench bench-api gpu-test lint docker-build docker-build-cpu run-gpu run-gpu-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The main job: a worker serving the embeddings example (a real model, on the GPU if
# there is one) on the local API, 127.0.0.1:8000; it prints a curl line to try.
# `make oneshot` runs the seed's one-shot local test of the same handler.
run: $(STAMP)
	cd examples/embeddings && WORKER_PRELOAD=torch,sentence_transformers \
		../../$(BIN)/python -m worker serve handler.py

oneshot: $(STAMP)
	cd examples/embeddings && ../../$(BIN)/python handler.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Figures for docs/benchmarks.md (installs torch==2.13.0, the CPU build on these machines).
bench: $(STAMP)
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python bench/bench_core.py

bench-api: $(STAMP)
	$(BIN)/python bench/bench_api.py

gpu-test: $(STAMP)
	$(BIN)/python -m pytest -q gpu_tests

# No Docker engine runs on the development machines: build and run these where one does.
IMAGE ?= gpu-worker
lint: $(STAMP)
	$(BIN)/hadolint --failure-threshold warning docker/Dockerfile docker/Dockerfile.cpu

docker-build:
	docker build -f docker/Dockerfile -t $(IMAGE):gpu .

docker-build-cpu:
	docker build -f docker/Dockerfile.cpu -t $(IMAGE):cpu .

run-gpu:
	docker run --rm --gpus all -p 8000:8000 -e WORKER_SERVE_API=true \
		-e WORKER_API_HOST=0.0.0.0 $(IMAGE):gpu

run-gpu-test:
	docker run --rm --gpus all $(IMAGE):gpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
