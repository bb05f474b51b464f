# Two commands for a fresh machine: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint unit bench clean openssl-cli histories chromium pacs postgres prometheus

$(BIN)/.installed: pyproject.toml
	@echo "==> Python: creating $(VENV) and installing Careweave with its test tools (pip)"
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

fhir-server/node_modules/.installed: fhir-server/package.json fhir-server/package-lock.json
	@echo "==> Node: installing the demo FHIR R4 server's packages (npm ci)"
	@command -v npm >/dev/null || { echo "==> installing Node.js and npm (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
	@npm ci --prefix fhir-server --no-audit --no-fund --loglevel=error
	@touch $@

partners/node_modules/.installed: partners/package.json partners/package-lock.json
	@echo "==> Node: installing the demo partner systems' packages (npm ci)"
	@command -v npm >/dev/null || { echo "==> installing Node.js and npm (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
	@npm ci --prefix partners --no-audit --no-fund --loglevel=error
	@touch $@

# The TLS tests use OpenSSL's own client as a sender nobody here wrote.
openssl-cli:
	@command -v openssl >/dev/null || { echo "==> installing the openssl command (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

# The browser tests (tests/browser) drive Debian's Chromium through Playwright: the system
# browser, never `playwright install` (no browser download).
chromium:
	@test -x /usr/bin/chromium || { echo "==> installing Debian's chromium for the browser tests (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Imaging order-to-result: Debian's Orthanc (the PACS, with its worklist and DICOMweb
# plugins) runs under the state dir as the current user; dcmtk is the modality in tests.
pacs:
	@{ command -v Orthanc || test -x /usr/sbin/Orthanc; } >/dev/null && \
		test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v storescu >/dev/null || \
		{ echo "==> installing Debian's orthanc, orthanc-dicomweb and dcmtk for imaging (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			orthanc orthanc-dicomweb dcmtk >/dev/null; }

# Careweave's database on PostgreSQL: the tests start a throwaway server of their own from
# Debian's postgresql package (initdb into a temporary folder, as the postgres user when run
# as root); the package's own cluster is not used.
postgres:
	@{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || \
		{ echo "==> installing Debian's postgresql for the database tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The dashboard's queries and the alert rules run on a real Prometheus: the tests start a
# throwaway server of their own from Debian's prometheus package (its own data folder, a free
# loopback port); the package's service is not used.
prometheus:
	@test -x /usr/bin/prometheus && test -x /usr/bin/promtool || \
		{ echo "==> installing Debian's prometheus (server and promtool) for the dashboard and alert tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus >/dev/null; }

setup: $(BIN)/.installed fhir-server/node_modules/.installed partners/node_modules/.installed

demo: setup pacs
	@echo "==> Starting the embedded stack and sending the sample feed through the gateway"
	@$(BIN)/careweave demo

lint: setup
	@echo "==> ruff (lint and format) and mypy (strict on every package)"
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

test: lint openssl-cli chromium pacs postgres prometheus
	@echo "==> pytest: unit, workflow (real Temporal dev server) and end-to-end (real FHIR server, MLLP peers); database tests on SQLite and PostgreSQL; the dashboard and alerts on Prometheus"
	@$(BIN)/pytest -q

# Replay safety: tests/replay replays every history under tests/histories against today's
# workflow code (part of `make test`). This re-records them, which only a deliberate change
# should do (tests/histories/README.md says when); discharge_sync/at_*/ is never rewritten.
histories: setup
	@echo "==> Re-recording tests/histories ON PURPOSE from today's code (real Temporal, FHIR server and MLLP partners; histories recorded by older commits are kept), then replaying them: review the diff before committing"
	@$(BIN)/python -m tests.histories.record
	@$(BIN)/pytest -q tests/replay

bench: setup
	@$(BIN)/python bench/parse.py
	@$(BIN)/python bench/ingest.py
	@$(BIN)/python bench/discharge.py
	@$(BIN)/python bench/identity.py

clean:
	rm -rf $(VENV) fhir-server/node_modules partners/node_modules .state
