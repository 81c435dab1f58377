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

.PHONY: setup chromium run train serve test test-all lint format bench schema typecheck browser-check clean

setup: $(STAMP) chromium

# The browser tests (tests/test_dashboard_browser.py, tests/browser/) drive Debian's `chromium`.
# Where it is missing and this runs as root with apt-get (CI, a fresh container), it is installed:
# one `apt-get update`, then the package. Elsewhere, or if that fails, the reason is written to
# $(CHROMIUM_NOTE) and those tests skip with it. Nothing runs when a Chromium is found.
CHROMIUM_NOTE := $(VENV)/chromium-missing.txt
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600
chromium: $(STAMP)
	@if $(PY) -c 'import sys; from tests.browser.check_seed_client import find_chromium; sys.exit(find_chromium() is None)'; then \
		rm -f $(CHROMIUM_NOTE); \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "no Chromium, and not root with apt-get to install it: apt-get install chromium, or set CHROMIUM=/path/to/chrome" > $(CHROMIUM_NOTE); \
		echo "note: $$(cat $(CHROMIUM_NOTE)); the browser tests will skip"; \
	else \
		echo "installing Debian's chromium for the browser tests (apt-get, about a minute)"; \
		if { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends chromium; } > $(VENV)/chromium-install.log 2>&1; then \
			rm -f $(CHROMIUM_NOTE); \
		else \
			echo "apt-get install chromium failed (log: $(VENV)/chromium-install.log): $$(tail -n 1 $(VENV)/chromium-install.log)" > $(CHROMIUM_NOTE); \
			echo "warning: $$(cat $(CHROMIUM_NOTE)); the browser tests will skip"; \
		fi; \
	fi

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
# random order of pytest-randomly; -p no:randomly for file order, --randomly-seed=N to repeat one).
test: setup lint typecheck
	$(PY) -m pytest -q

test-all: setup
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
browser-check: setup
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
