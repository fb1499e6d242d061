# driftline — `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.driftline-installed
BIN := $(VENV)/bin
# Exports AIRFLOW_HOME, DAGS/PLUGINS folders, Feast and MLflow locations from driftline.settings.
DRIFTLINE_ENV = eval "$$($(BIN)/driftline env)"

.PHONY: help setup lock up down demo status mlflow-ui lint format test test-fast test-simulation bench bench-events bench-serving generate apply materialize clean-state

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) ## create .venv (bootstrapping uv if needed) and install the lock; a no-op when up to date
# --compile-bytecode: every task is a fresh process, and with PYTHONDONTWRITEBYTECODE set (as on
# these machines) each one compiled feast, mlflow, evidently, airflow ... again: ~7 s a retrain.

$(STAMP): requirements.lock pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		if command -v uv >/dev/null 2>&1; then uv venv --python $(PYTHON) $(VENV); \
		else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@if [ ! -x $(BIN)/uv ]; then $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; fi
	$(BIN)/uv pip sync --python $(BIN)/python --quiet --compile-bytecode requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $(STAMP)
	@echo "driftline installed in $(VENV)"

lock: ## re-resolve requirements.txt into the hashed requirements.lock
	$(BIN)/uv pip compile requirements.txt --python-version 3.11 --generate-hashes -o requirements.lock --quiet

up: setup ## start the embedded stack: data, Feast, Airflow on :8080 (AIRFLOW_PORT), MLflow UI on :5000, a first champion, scoring on :8000 (DRIFTLINE_SERVE_PORT)
	$(BIN)/driftline up

down: ## stop exactly what `make up` started
	@if [ -x $(BIN)/driftline ]; then $(BIN)/driftline down; else echo "nothing to stop (no .venv)"; fi

demo: setup ## the whole loop against the running stack: drift -> retrain -> decision; a corrupted batch is blocked
	$(BIN)/driftline demo

status: setup ## the champion, the last decisions with reasons, the open drift events
	$(BIN)/driftline status

lint: setup ## ruff check (with the Airflow AIR rules) and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint ## lint, then the whole test suite (sets up everything it needs)
	$(BIN)/pytest

test-fast: setup ## unit and DAG-integrity tests only
	$(BIN)/pytest tests/unit tests/dags

test-simulation: setup ## the concept-drift simulation through a live stack (~17 min; not in make test)
	$(BIN)/pytest -m simulation tests/e2e/test_simulate.py

bench: setup ## retrain (SIZES: 100k,1m,5m,10m; default 100k,1m), drift, event and scoring benchmarks; exit 1 if a goal is missed; not part of make test
	$(BIN)/python bench/retrain_bench.py --sizes "$${SIZES:-100k,1m}" --check
	status=0; $(BIN)/python bench/retrain_bench.py --sizes "$${SIZES:-100k,1m}" || status=$$?; \
	$(BIN)/python bench/drift_bench.py --size $$(echo $${SIZES:-100k,1m} | tr ',' '\n' | tail -1); \
	flock /tmp/driftline-stack.lock $(BIN)/python bench/event_latency_bench.py; \
	$(BIN)/python bench/serving_bench.py || status=$$?; \
	exit $$status

bench-serving: setup ## scoring service: 200 req/s open loop for 60 s x 3, 1,000-row batches, floors; exits 1 on a missed goal
	$(BIN)/python bench/serving_bench.py

bench-events: setup ## drift event -> retrain first task latency on the embedded stack (p50/p95)
	flock /tmp/driftline-stack.lock $(BIN)/python bench/event_latency_bench.py

generate: setup ## append DAYS (default 1) of SCENARIO (default baseline) data to the offline store
	$(BIN)/driftline generate --scenario $${SCENARIO:-baseline} --days $${DAYS:-1}

apply: setup ## register the Feast repo (feast apply); keeps materialization windows
	$(BIN)/driftline feast apply

materialize: setup ## materialize the newest day of features into the online store
	$(BIN)/driftline materialize

clean-state: ## delete the state directory (.local or $$DRIFTLINE_HOME): data, registry, models
	@$(DRIFTLINE_ENV); echo "removing $$DRIFTLINE_HOME"; rm -rf "$$DRIFTLINE_HOME"
