# Viva Relay developer commands. `make demo` and `make test` install what they need themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite

.PHONY: help install postgres demo test lint typecheck unit bench bench-smoke clean

help:
	@echo "make demo   - run a simulated drop end to end on Azurite (no Azure account needed)"
	@echo "make test   - lint, type-check and run every test (starts Azurite itself)"
	@echo "make bench  - measure the ingest path on 100 MB and 1 GB drops"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

install: $(STAMP) $(AZURITE)

# The consumer's tests, demo and bench start their own PostgreSQL server from the Debian package.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: install postgres
	$(PY) -m pytest -q

test: install lint typecheck unit

demo: install postgres
	$(PY) -m devtools.demo
	$(PY) -m devtools.demo_consumer

bench: install postgres
	$(PY) -m devtools.bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .demo .bench
