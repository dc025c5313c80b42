# The README's two commands: `make run` and `make test`. Both are idempotent: the venv is
# only (re)installed when pyproject.toml changed since the last install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= cpu,models,dev
export TUNESERVE_HOME ?= $(HOME)/.cache/tuneserve
BASE_MODEL ?= gemma-3-270m
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install system-deps run test test-fast prepare lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) "$(EXTRAS)"
	touch $(STAMP)

# Debian packages the browser tests need (headless Chromium); a no-op when present.
system-deps:
	@if [ -f scripts/install-system-deps.sh ]; then bash scripts/install-system-deps.sh; fi

prepare: install
	$(BIN)/tuneserve models prepare $(BASE_MODEL)

run: prepare
	bash scripts/run.sh

test: install system-deps
	bash scripts/test.sh

test-fast: install
	$(BIN)/python -m pytest -m "not slow" -q

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
