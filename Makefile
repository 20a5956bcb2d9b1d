# One-line set-up for a fresh machine: `make demo` installs everything into .venv and runs sadm_nnunet_demo;
# `make test` installs everything and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install test demo demo-quick benchmark

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e ".[test]"

test: install
	$(BIN)/python -m pytest -q --durations=12 tests

demo: install
	$(BIN)/sadm_nnunet_demo

demo-quick: install
	$(BIN)/sadm_nnunet_demo --quick

benchmark: install
	$(BIN)/python benchmarks/stage1_benchmark.py --quick
	$(BIN)/python benchmarks/stage2_benchmark.py --quick
	$(BIN)/python benchmarks/quality_benchmark.py --quick --workdir /tmp/sadm_quality_quick
