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

.PHONY: install run test test-fast prepare lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) "$(EXTRAS)"
	touch $(STAMP)

prepare: install
	$(BIN)/tuneserve models prepare $(BASE_MODEL)

run: prepare
	bash scripts/run.sh

test: install
	bash scripts/test.sh

test-fast: install
	$(BIN)/python -m pytest -m "not slow" -q

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
