# Codara: two commands do all the set-up on a fresh machine with Python 3.11+.
#   make demo   creates .venv from uv.lock, runs the reference workload offline, prints the report
#   make test   lint, types, import contract, unit, integration (SQLite + PostgreSQL), crash tests
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
DEMO_ARGS ?= --simulate-reviewers
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synced

.PHONY: demo test lint types imports unit bench env pg-start mariadb-start clean help

help:
	@echo "make demo   - run the reference workload (bank support inbox triage) and print the report"
	@echo "make test   - the whole suite: lint, types, import contract, tests on SQLite and PostgreSQL"
	@echo "make bench  - Codara vs LangGraph vs DBOS vs the raw commit floor (writes benchmarks/latest.json)"

.bootstrap/bin/uv:
	$(PYTHON) -m venv .bootstrap
	.bootstrap/bin/pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: the .pyc files an installed package has. Without them every process
# compiles what it imports (PYTHONDONTWRITEBYTECODE=1 keeps it from saving them): about 0.6 s
# of CPU at each `codara worker` start, measured with the triage app.
$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --all-groups --compile-bytecode
	@touch $(STAMP)

env: $(STAMP)

demo: env
	@mkdir -p demo-out
	$(PY) -m examples.support_triage $(DEMO_ARGS)

lint: env
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

types: env
	$(VENV)/bin/mypy

imports: env
	$(VENV)/bin/lint-imports

pg-start:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { \
	  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then \
	    echo "starting PostgreSQL"; \
	    pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true; \
	  else \
	    echo "!!! PostgreSQL is not running here: its tests will be skipped (set CODARA_TEST_POSTGRES_URL to enable)"; \
	  fi; }

mariadb-start:
	@mariadb-admin -h 127.0.0.1 -u root --connect-timeout=2 ping >/dev/null 2>&1 || { \
	  if [ -x /usr/sbin/mariadbd ] && command -v start-stop-daemon >/dev/null; then \
	    echo "starting MariaDB"; \
	    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null; \
	    start-stop-daemon --start --oknodo --background --chuid mysql --exec /usr/sbin/mariadbd || true; \
	    for i in 1 2 3 4 5 6 7 8 9 10; do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done; \
	  else \
	    echo "!!! MariaDB is not running here: the SQL source's MariaDB tests will be skipped (set CODARA_TEST_MARIADB_URL to enable)"; \
	  fi; }

unit: env pg-start mariadb-start
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint types imports unit

bench: env pg-start
	$(PY) -m compileall -q src examples benchmarks  # the processes it starts import compiled code
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .bootstrap .mypy_cache .ruff_cache .pytest_cache .cache
