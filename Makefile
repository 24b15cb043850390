# Quick start: `make run` (gateway on :30000 in front of two simulated engines) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_INSTALL = sh -c 'apt-get install -y "$$0" || (apt-get update && apt-get install -y "$$0")'

.PHONY: smg-flags run test test-unit test-servers test-clients ci lint typecheck bench bench-setup clean test-tools browser

RUN_STAMP := $(VENV)/.installed-run

# `make run` installs the gateway alone; the test tools (SDKs, linters, ...) come with the first `make test`.
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# instructor in a venv of its own (its releases pin jiter<0.15; the test venv's openai needs a newer one):
# tests/integration/test_structured_output_clients.py runs it as a client of the demo.
CLIENTS_VENV := .venv-instructor
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed

$(CLIENTS_STAMP): tests/clients/instructor-requirements.txt
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install --quiet -r tests/clients/instructor-requirements.txt
	touch $(CLIENTS_STAMP)

test-clients: $(CLIENTS_STAMP)

run: $(RUN_STAMP)
	$(BIN)/shepherd demo

# SMG's own `smg launch` flag list, as data for the flag-table test (needs `make bench-setup` first).
smg-flags:
	.venv-smg/bin/python scripts/dump_smg_flags.py > shepherd/data/smg_launch_flags.json

# Two processes, each taking whole test files (their module-scoped gateways stay shared): most
# integration tests wait on other processes, so two at once fit the 2-core machine.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

test: $(STAMP) test-clients test-tools browser test-servers
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# The real servers the storage and scale-out tests start on loopback (Debian's packages); installed only when missing.
test-servers:
	@command -v redis-server >/dev/null || $(APT_INSTALL) redis-server
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(APT_INSTALL) postgresql
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || $(APT_INSTALL) haproxy

# The fast in-process tests only (no processes, no sockets beyond loopback test servers).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

# What CI runs: the pinned linters, then the whole suite with a coverage report.
ci: lint typecheck test-clients test-tools browser test-servers
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) --cov --cov-report=term
# Debian packages tests use when present; a test that needs a missing one skips and says why.
test-tools:
	@command -v kubectl >/dev/null || { command -v apt-get >/dev/null && \
		{ apt-get install -y kubernetes-client || { apt-get update && apt-get install -y kubernetes-client; }; }; } \
		|| echo "kubectl could not be installed: the manifest check will be skipped"

# The status-page test drives the distribution's Chromium over the DevTools protocol; install it when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && { apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; }; } || \
	  echo "chromium is missing: tests/integration/test_dashboard.py will fail until it is installed"

lint: $(STAMP)
	$(BIN)/ruff check shepherd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.proxy_overhead

# wrk (load generator), nginx (the light backend of proxy_overhead and soak) and SMG in its own venv.
bench-setup:
	command -v wrk >/dev/null || (command -v apt-get >/dev/null && apt-get install -y wrk) || echo "install wrk for sharper numbers"
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || (command -v apt-get >/dev/null && $(APT_INSTALL) nginx) || echo "install nginx: bench/proxy_overhead.py needs it"
	test -x .venv-smg/bin/smg || ($(PYTHON) -m venv .venv-smg && .venv-smg/bin/pip install --quiet smg)

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .venv-smg .pytest_cache .ruff_cache .mypy_cache build *.egg-info
