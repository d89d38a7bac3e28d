# Each target sets up .venv itself, so a fresh clone with only Python needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all faults lint bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/cluster_demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest

faults: $(STAMP)
	$(BIN)/python -m pytest tests/faults -m faults

lint: $(STAMP)
	$(BIN)/ruff check kvactors tests examples benchmarks
	$(BIN)/ruff format --check kvactors
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/embedded.py --runs 5
	$(BIN)/python benchmarks/throughput.py --runs 5 --seconds 3
	$(BIN)/python benchmarks/replicated.py --runs 3
	$(BIN)/python benchmarks/durability.py --runs 3
	$(BIN)/python benchmarks/rebalance.py --runs 3
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
