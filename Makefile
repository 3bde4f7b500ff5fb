# tier-ml: `make run` sets up and runs the demo job; `make test` sets up and runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO := data/demo
DEMO_AS_OF ?= 2025-12-31T23:59:59Z
DEMO_DB := sqlite:///$(DEMO)/tier_ml.sqlite
DEMO_MLFLOW := sqlite:///$(DEMO)/mlflow.db

.PHONY: run test lint bench lock clean help

help:
	@echo "make run    - set up .venv, simulate a demo data set, classify it, train the models, serve the API on 127.0.0.1:8000"
	@echo "make test   - set up .venv, run ruff, import contracts and the whole pytest suite"
	@echo "make bench  - run the benchmarks and write docs/benchmarks.md"
	@echo "make lock   - refresh requirements.lock from the current .venv"

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev,spark,tune]"
	touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/tier-ml simulate --customers 5000 --start 2024-01-01 --end 2025-12-31 --seed 7 --out $(DEMO)/events.parquet
	$(BIN)/tier-ml classify --events $(DEMO)/events.parquet --as-of $(DEMO_AS_OF) --out $(DEMO)/tiers.csv --rejects $(DEMO)/rejects.csv
	$(BIN)/tier-ml ingest $(DEMO)/events.parquet --db $(DEMO_DB) --now $(DEMO_AS_OF)
	$(BIN)/tier-ml train --events $(DEMO)/events.parquet --as-of $(DEMO_AS_OF) --tracking-uri $(DEMO_MLFLOW)
	@key=$$($(BIN)/python -c 'import secrets; print("tml_demo_" + secrets.token_urlsafe(24))'); \
	echo "demo API key (all scopes, this run only): $$key"; \
	echo "try: curl -H 'X-API-Key: $$key' http://127.0.0.1:8000/v1/segments/gold-at-risk  (docs: http://127.0.0.1:8000/docs)"; \
	TIER_ML_API_KEYS="demo:$$key:all" $(BIN)/tier-ml serve --db $(DEMO_DB) --tracking-uri $(DEMO_MLFLOW) --now $(DEMO_AS_OF)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	@# Java (Spark tests) and Chromium (dashboard tests): installed when missing and root;
	@# elsewhere those tests skip with a reason, except in CI (CI=true), where they must run.
	scripts/ensure-java.sh || [ -z "$$CI" ]
	scripts/ensure-browser.sh || [ -z "$$CI" ]
	scripts/with-postgres.sh $(BIN)/python -m pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/run.py

lock: $(INSTALLED)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache

# The MLflow UI on the local tracking store (MLFLOW_TRACKING_URI overrides; e.g. the demo's
# sqlite:///data/demo/mlflow.db). Artifacts are served from the store's mlartifacts/ folder.
MLFLOW_UI_STORE ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///mlflow.db)
.PHONY: mlflow-ui
mlflow-ui: $(INSTALLED)
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_UI_STORE) --host 127.0.0.1 --port 5000
