# Viva Relay developer commands. `make demo` and `make test` install what they need themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite

.PHONY: help install demo test lint typecheck unit bench bench-smoke mutate clean

help:
	@echo "make demo   - run a simulated drop end to end on Azurite (no Azure account needed)"
	@echo "make test   - lint, type-check and run every test (starts Azurite itself)"
	@echo "make bench  - measure the ingest path on 100 MB and 1 GB drops"
	@echo "make mutate - mutation testing of the checkpoint, packer and resume code; prints the kill rate"

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

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -q

test: install lint typecheck unit

demo: install
	$(PY) -m devtools.demo

bench: install
	$(PY) -m devtools.bench

# Mutation testing (not part of `make test`: it takes tens of minutes). Scope and tests: [tool.mutmut]
# in pyproject.toml. mutmut exits non-zero when mutants survive; the report below still prints.
mutate: install
	rm -rf mutants
	-$(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut export-cicd-stats
	$(PY) -m devtools.mutation_report

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .demo .bench mutants
