# tier-ml: `make run` sets up and runs the demo job; `make test` sets up and runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO := data/demo
DEMO_AS_OF ?= 2025-12-31T23:59:59Z

.PHONY: run test lint bench lock clean help

help:
	@echo "make run    - set up .venv, simulate a demo data set, classify it, print the tier pyramid"
	@echo "make test   - set up .venv, run ruff, import contracts and the whole pytest suite"
	@echo "make bench  - run the benchmarks and write docs/benchmarks.md"
	@echo "make lock   - refresh requirements.lock from the current .venv"

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/tier-ml simulate --customers 5000 --start 2024-01-01 --end 2025-12-31 --seed 7 --out $(DEMO)/events.parquet
	$(BIN)/tier-ml classify --events $(DEMO)/events.parquet --as-of $(DEMO_AS_OF) --out $(DEMO)/tiers.csv --rejects $(DEMO)/rejects.csv

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	scripts/with-postgres.sh $(BIN)/python -m pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/run.py

lock: $(INSTALLED)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
