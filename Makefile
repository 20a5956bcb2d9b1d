# One-line set-up for a fresh machine: `make test` installs everything into .venv and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install test benchmark

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e ".[test]"

test: install
	$(BIN)/python -m pytest -q tests

benchmark: install
	$(BIN)/python benchmarks/stage1_benchmark.py --quick
	$(BIN)/python benchmarks/stage2_benchmark.py --quick
