# One-line set-up for a fresh machine: `make demo` installs everything into .venv and runs sadm_nnunet_demo;
# `make test` installs everything and runs the tests; `make test-fast` runs those that train nothing (the edit loop).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install test test-fast demo demo-quick benchmark

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e ".[test]"

# Two worker processes, one file at a time each, except that the files on the session's nnU-Net folders run as one
# unit (tests/conftest.py).
PYTEST = $(BIN)/python -m pytest -q --durations=25 -n 2 --dist loadfile

test: install
	$(PYTEST) tests

# Without the tests marked `slow` (nnU-Net trainings and predictions, the demo, the benchmarks' quick runs; see
# pytest.ini). Installs only when the package is not installed yet.
test-fast: $(BIN)/python
	@$(BIN)/python -c "import sadm_nnunet, pytest, xdist" 2>/dev/null || $(MAKE) install
	$(PYTEST) -m "not slow" tests

demo: install
	$(BIN)/sadm_nnunet_demo

demo-quick: install
	$(BIN)/sadm_nnunet_demo --quick

benchmark: install
	$(BIN)/python benchmarks/stage1_benchmark.py --quick
	$(BIN)/python benchmarks/stage2_benchmark.py --quick
	$(BIN)/python benchmarks/quality_benchmark.py --quick --workdir /tmp/sadm_quality_quick
