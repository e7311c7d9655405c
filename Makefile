# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run oneshot test bench bench-api gpu-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The main job: a worker serving the example handler on the local API (127.0.0.1:8000);
# it prints a curl line to try. `make oneshot` runs the seed's one-shot local test.
run: $(STAMP)
	cd examples && ../$(BIN)/python -m worker serve standard.py

oneshot: $(STAMP)
	cd examples && ../$(BIN)/python standard.py

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
