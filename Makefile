# Viva Relay developer commands. `make demo` and `make test` install what they need themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# pytest worker processes: most tests wait on Azurite, PostgreSQL or a CLI subprocess, so several run at once.
TEST_WORKERS ?= auto

.PHONY: help install postgres demo dev dev-down test lint typecheck iac unit bench bench-smoke mutate clean

help:
	@echo "make demo   - run a simulated drop end to end on Azurite (no Azure account needed)"
	@echo "make test   - lint, type-check and run every test (starts Azurite itself)"
	@echo "make dev    - Azurite + local Key Vault/Data Factory in the background, and local.settings.json"
	@echo "make dev-down - stop what make dev started (Azurite's data stays in .dev/)"
	@echo "make bench  - measure the ingest path on 100 MB and 1 GB drops"
	@echo "make mutate - mutation testing of the checkpoint, packer and resume code; prints the kill rate"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "viva_relay_app_root.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

$(CHECKOV_STAMP): requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

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

# checkov's ARM checks over infra/ must report 0 failed. A check may be skipped only in infra/.checkov.yaml,
# with the reason written beside it. (The schema check of the same templates runs in pytest.)
iac: $(CHECKOV_STAMP)
	LOG_LEVEL=ERROR $(CHECKOV_VENV)/bin/checkov --config-file infra/.checkov.yaml --quiet --compact

unit: install postgres
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test: install lint typecheck iac unit

demo: install postgres
	$(PY) -m devtools.demo

dev: install
	$(PY) -m devtools.dev up

dev-down:
	@if test -x $(PY); then $(PY) -m devtools.dev down; else echo "nothing to stop (no .venv)"; fi

bench: install postgres
	$(PY) -m devtools.bench

# Mutation testing (not part of `make test`: it takes tens of minutes). Scope and tests: [tool.mutmut]
# in pyproject.toml. mutmut exits non-zero when mutants survive; the report below still prints.
mutate: install
	rm -rf mutants
	-$(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut export-cicd-stats
	$(PY) -m devtools.mutation_report

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .demo .bench .dev mutants
