# arena-distill: every stage is one target; ARGS passes Hydra overrides, e.g.
#   make data ARGS="data=competition data.train.path=../shared/data/preference/pandalm.csv"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# The demo's overrides; `make demo DEMO_ARGS=...` adds more.
DEMO_ARGS ?=
DEMO := experiment=demo $(DEMO_ARGS)
STAGE = $(PY) -m arena_distill

.PHONY: help setup test test-slow test-all lint format demo demo-data data tiny-models tokenize clean

help:
	@echo "make setup      create $(VENV) and install the package with the dev extra"
	@echo "make test       the default test suite (what CI runs)"
	@echo "make test-slow  the slow-marked tests"
	@echo "make demo       the whole pipeline on the embedded demo (CPU, tiny models)"
	@echo "make lint       ruff"
	@echo "stages (ARGS=\"hydra overrides\"): demo-data data tiny-models tokenize"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: setup
	$(PY) -m pytest -m "slow" -q

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: setup
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

# --- stages -------------------------------------------------------------------------------
demo-data: setup
	$(STAGE) demo_data $(ARGS)

data: setup
	$(STAGE) data $(ARGS)

tiny-models: setup
	$(STAGE) tiny_models $(ARGS)

tokenize: setup
	$(STAGE) tokenize $(ARGS)

# --- the embedded default, end to end -------------------------------------------------------
demo: setup
	$(STAGE) demo_data $(DEMO)
	$(STAGE) data $(DEMO)
	$(STAGE) tiny_models $(DEMO)
	for m in tiny_gemma2 tiny_llama tiny_qwen2; do $(STAGE) tokenize $(DEMO) model=$$m || exit 1; done
	@echo "demo run folder: runs/demo (data/, models/, tokens/); see docs/ARCHITECTURE.md"

clean:
	rm -rf runs outputs multirun .pytest_cache .ruff_cache
