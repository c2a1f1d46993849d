# The two commands a new user needs:  `make demo` (the main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install demo test lint benchmarks dashboards deps realservers

$(BIN)/llm-probe-exporter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(BIN)/llm-probe-exporter

demo: install
	$(BIN)/llm-probe-exporter demo

lint: install
	$(BIN)/ruff check exporter tests dashboards
	$(BIN)/ruff format --check exporter tests dashboards
	$(BIN)/mypy
	$(BIN)/mypy dashboards/generate.py dashboards/common.py

# Real llama.cpp servers for the realserver tests: built once from PyPI's llama-cpp-python
# and cached in ~/.cache/llm-probe-exporter (about 12 minutes on 2 cores the first time).
realservers: install
	$(BIN)/python -m tests.realservers.build

test: install lint realservers
	$(BIN)/python -m pytest

dashboards: install
	$(BIN)/python dashboards/generate.py --out dashboards/

benchmarks: install
	$(BIN)/python tests/benchmarks/engine_accuracy.py
	$(BIN)/python tests/benchmarks/scrape_during_sweep.py

# System packages the tests use (Debian; needs root): Prometheus' promtool and Alertmanager.
deps:
	command -v promtool >/dev/null && command -v amtool >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager openssl)
