# trainyard: `make demo` trains on the built-in dataset; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
LOCK_ID := $(shell sha256sum requirements.lock | cut -c1-16)
STAMP := $(VENV)/.lock-$(LOCK_ID)
PYTEST_ARGS ?=

IMAGE ?= trainyard-train:latest

.PHONY: demo sweep test test-fast lint venv data repro ui lock clean image image-ci bench

demo: venv data  ## train on the demo dataset with the Prefect flow, print the MLflow run
	$(BIN)/trainyard run

sweep: venv data  ## a small Optuna sweep of the demo on CPU (4 trials of 20 epochs), print the best trial
	$(BIN)/trainyard sweep --trials 4 --set train.epochs=20

test: venv  ## the whole suite (real MLflow server, Prefect API, dvc, training)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv  ## ruff (pyflakes, bugbear, third-party imports only under tasks/adapters/) and mypy (strict on tasks/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-fast: venv  ## unit tests only (seconds)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

venv: $(STAMP)  ## the virtual env, exactly as requirements.lock says
	@# (re)install the project itself when the venv's `tasks` is not this checkout (e.g. a shared CI venv)
	@(cd / && $(abspath $(BIN))/python -c 'import pathlib, sys, tasks; sys.exit(not pathlib.Path(tasks.__file__).resolve().is_relative_to(pathlib.Path("$(CURDIR)").resolve()))' 2>/dev/null) \
	  || $(BIN)/pip install -q --no-deps --no-build-isolation -e .

# --no-deps: the lock is complete, so pip installs it as is, with no resolver run.
# The stamp's name carries the lock's hash, so a changed lock rebuilds and a fresh clone
# (new mtimes, same lock) reuses a shared venv.
$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "trainyard needs Python >= 3.11 (found $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=68" wheel
	$(BIN)/pip install -q --no-deps -r requirements.lock
	rm -f $(VENV)/.lock-* && touch $@

data: venv  ## generate data/demo (deterministic; matches data/demo.dvc) and DVC-track it
	$(BIN)/trainyard data demo --dvc

repro: venv data  ## the same pipeline through DVC
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

ui: venv  ## MLflow UI on the local tracking store
	$(BIN)/trainyard ui

lock:  ## re-resolve the dependency set (slow: minutes) and rewrite requirements.lock
	rm -rf /tmp/trainyard-lock && $(PYTHON) -m venv /tmp/trainyard-lock
	/tmp/trainyard-lock/bin/pip install -q --upgrade pip
	/tmp/trainyard-lock/bin/pip install -q -e ".[test]"
	{ head -3 requirements.lock; /tmp/trainyard-lock/bin/pip freeze --exclude-editable | grep -v '^trainyard'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

image:  ## the training image on the official PyTorch CUDA base (needs a registry, or wheels in docker/.wheelhouse)
	DOCKER_BUILDKIT=0 docker build -f docker/train.Dockerfile -t $(IMAGE) .
	@docker image inspect --format '$(IMAGE) = {{.Id}}  cuda={{index .Config.Labels "org.trainyard.cuda"}}' $(IMAGE)

image-ci: venv  ## offline image trainyard-train:ci (local debootstrap base + wheelhouse), what CI tests with
	VENV="$(VENV)" bash .ci/build-image.sh

bench: venv  ## the staging benchmark (trainyard vs s5cmd, aws s3 sync, dvc pull); writes bench/results.md
	bench/run.sh --repeat 2

clean:
	rm -rf runs reports metrics.json mlflow.db mlartifacts
