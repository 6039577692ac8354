# Two entry points for newcomers: `make test` and `make bench`. Both build .venv on
# first use and, unless SNAPSTORE_DSN is set, run against a throwaway embedded PostgreSQL.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install test bench bench-micro lint format sync clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "snapstore needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-micro: $(STAMP)
	$(BIN)/python -m pytest tests/test_codec_bench.py --benchmark-enable --benchmark-only -q

# The sync modules are generated from their async sources (see snapstore/_async_to_sync.py).
sync: $(STAMP)
	$(BIN)/python snapstore/_async_to_sync.py

lint: $(STAMP)
	$(BIN)/python snapstore/_async_to_sync.py --check
	$(BIN)/ruff check snapstore bench tests
	$(BIN)/ruff format --check snapstore bench tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format snapstore bench tests
	$(BIN)/ruff check --fix snapstore bench tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
