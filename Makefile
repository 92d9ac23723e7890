# BridgeNet: `make run` (setup + the whole pipeline on the embedded defaults), `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := libusb-1.0-0 git g++ python3-dev

.PHONY: setup run test test-fast lint system-deps screenshots-deps clean

setup: system-deps $(STAMP)

# open3d needs libusb at import time; dvc needs git; torch.compile (predict.compile_backbone,
# and its tests) builds C++ kernels with g++ against Python's headers.
system-deps:
	@missing=""; \
	for pkg in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages:$$missing; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole pipeline (dvc repro: synthesize, preprocess, train, evaluate, report,
# register) against one local Prefect server, then the metrics table.
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.local_server -- dvc repro
	$(BIN)/bridgenet summary

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check bridgenet flows tests bench scripts
	$(BIN)/hadolint Dockerfile

# Optional: headless Chromium for scripts/registry_screenshots.py (the registry pictures in docs/registry.md).
screenshots-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "run: sudo apt-get install -y chromium" >&2; exit 1; \
	  fi; }

clean:
	rm -rf data models reports mlruns mlartifacts mlflow.db
