# Quick start: `make run` (gateway on :30000 in front of two simulated engines) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_INSTALL = sh -c 'apt-get install -y "$$0" || (apt-get update && apt-get install -y "$$0")'

.PHONY: run test test-unit test-servers ci lint typecheck bench bench-setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/shepherd demo

test: $(STAMP) test-servers
	$(BIN)/python -m pytest

# The real servers the storage tests start on loopback (Debian's packages); installed only when missing.
test-servers:
	@command -v redis-server >/dev/null || $(APT_INSTALL) redis-server
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(APT_INSTALL) postgresql

# The fast in-process tests only (no processes, no sockets beyond loopback test servers).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

# What CI runs: the pinned linters, then the whole suite with a coverage report.
ci: lint typecheck test-servers
	$(BIN)/python -m pytest --cov --cov-report=term

lint: $(STAMP)
	$(BIN)/ruff check shepherd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.proxy_overhead

# wrk (load generator) and SMG in its own venv, for the comparisons in bench/.
bench-setup:
	command -v wrk >/dev/null || (command -v apt-get >/dev/null && apt-get install -y wrk) || echo "install wrk for sharper numbers"
	test -x .venv-smg/bin/smg || ($(PYTHON) -m venv .venv-smg && .venv-smg/bin/pip install --quiet smg)

clean:
	rm -rf $(VENV) .venv-smg .pytest_cache .ruff_cache .mypy_cache build *.egg-info
