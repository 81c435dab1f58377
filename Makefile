# Everything the project needs is installed here, into .venv, from pyproject.toml.
# CPU machines get the CPU build of torch pinned (a plain `pip install torch` pulls a multi-GB
# CUDA build); a machine with nvidia-smi gets the pyproject's open torch range.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)
STAMP := $(VENV)/.installed
# Ray 2.59+ turns token auth on by default; a local single-user instance runs without it.
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run train serve test test-all lint format bench schema typecheck browser-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The main job: serve REST + /ws on $(HOST):$(PORT) and train 5 folds on the bundled S&P 500.
run: $(STAMP)
	$(PY) -m orchestrator serve --host $(HOST) --port $(PORT) --train-on-start --data sp500 --folds 5 --epochs 25

# A headless 5-fold run with progress bars, no server.
train: $(STAMP)
	$(PY) -m orchestrator train --data sp500 --folds 5 --epochs 25

serve: $(STAMP)
	$(PY) -m orchestrator serve --host $(HOST) --port $(PORT)

# CI's command (.ci/run): lint and format check, mypy --strict, then the default suite (the
# random order of pytest-randomly; -p no:randomly, or -p randomly -p "randomly_seed=N", to pin).
test: $(STAMP) lint typecheck
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) bench/parallel_folds.py
	$(PY) bench/event_stream.py
	$(PY) bench/hpo_throughput.py

schema: $(STAMP)
	$(PY) -m orchestrator schema --out docs/ws-schema.json
	$(PY) -m orchestrator schema --asyncapi --out docs/asyncapi.yaml

# In headless Chromium (needs Chromium: `apt-get install chromium` on Debian, or
# CHROMIUM=/path/to/chrome): the dashboard and the reports during a real run, writing the
# README's screenshots to docs/screenshots; then the seed's JavaScript client example, unchanged,
# against a real server on port 8000.
browser-check: $(STAMP)
	DASHBOARD_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_dashboard_browser.py
	$(PY) -m tests.browser.check_seed_client --out docs/results/browser-seed-client.json

typecheck: $(STAMP)
	$(PY) -m mypy --strict orchestrator workers api

LINTED := orchestrator workers api tests bench

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# Formats and sorts imports in place (what `make lint` checks).
format: $(STAMP)
	$(VENV)/bin/ruff check --select I --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
