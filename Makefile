# cnnbench: `make run` trains a real model, `make test` runs the test suite. Each installs what
# it needs first: a virtual environment in .venv with the package and its dependencies, and
# Fashion-MNIST from Debian's dataset-fashion-mnist package when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data browser run test test-slow test-all bench gpu-kit models-table clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,sweeps,slurm,tracking]'
	touch $@

# Fashion-MNIST without internet: Debian ships it. If this fails, cnnbench says how else to get it.
data:
	@test -d $(DATA_DIR) || { $(SUDO) apt-get install -y -q dataset-fashion-mnist \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } \
	  || echo "warning: could not install dataset-fashion-mnist; see README (Data)"; }

# Chromium, from Debian, renders report.html in a test (which skips without it).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; } \
	  || echo "warning: could not install chromium; the browser test of report.html will skip"; }

# BN-LeNet at 28 px with a cosine SGD recipe: ~90% test accuracy in about 1.5 minutes on 2 CPU cores.
run: install data
	$(BIN)/cnnbench experiment=quickstart

# The default suite, in parallel on every core (pytest-xdist; the tests of one model share a worker
# and what it computed about the model). GPU tests skip themselves without a GPU.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadgroup
test: install data browser
	$(PYTEST) -m "not slow"

# The slow tests only (several processes, real signals, full resolutions): CI runs them after `make test`.
test-slow: install data browser
	$(PYTEST) -m slow

# Everything, the slow tests included.
test-all: install data browser
	$(PYTEST)

bench: install data
	$(BIN)/python benchmarks/pipeline_cpu.py

# What a lent GPU machine lacks, into the git-ignored .carry/ that the device call carries: wheels of
# hydra-core, omegaconf, antlr4 and the parallel launcher (the versions installed here) and the
# dataset's four files. There: python3 benchmarks/gpu_session.py --out "$$OUT" (BENCHMARKS.md, "GPU").
GPU_WHEELS := hydra-core omegaconf antlr4-python3-runtime hydra-submitit-launcher submitit
gpu-kit: install data
	mkdir -p .carry/whl .carry/fashion-mnist
	$(BIN)/python -m pip wheel --quiet --no-deps -w .carry/whl $$($(BIN)/python -c "import importlib.metadata as m; \
	  print(*(f'{p}=={m.version(p)}' for p in '$(GPU_WHEELS)'.split()))")
	cp $(DATA_DIR)/*-ubyte.gz .carry/fashion-mnist/
	@du -sh .carry

# Regenerate the README's models table and the exercise page's recipe jobs (tests fail while stale).
models-table: install
	$(BIN)/python -m cnnbench.catalog --write README.md
	$(BIN)/python -m cnnbench.catalog --recipes docs/exercises.md

clean:
	rm -rf $(VENV) outputs/runs outputs/sweeps .pytest_cache
