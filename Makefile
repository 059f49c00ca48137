# The README's commands. `make up` and `make test` install whatever is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
PORT ?= 8080
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_VERSION_CHECK := 1

.PHONY: install web up up-memory test test-unit test-integration test-infra test-e2e test-browser test-shuffled synth bench lint clean

OPENCODE_VERSION := 1.18.33
# The Claude Code and Codex CLIs the harness adapters drive (docs/harnesses.md); TOOLS moves the install.
CLAUDE_CODE_VERSION := 2.1.332
CODEX_VERSION := 0.171.0
TOOLS ?= .tools

install: $(STAMPS)/java $(STAMPS)/python $(STAMPS)/node $(STAMPS)/opencode $(STAMPS)/claude-code $(STAMPS)/codex \
	$(STAMPS)/bubblewrap

# DynamoDB Local needs Java 17+; Debian's headless JRE is enough.
$(STAMPS)/java:
	@mkdir -p $(STAMPS)
	@if java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then echo "java: $$(java -version 2>&1 | head -1)"; \
	else echo "installing Java 17 for DynamoDB Local"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; fi
	@touch $@

$(STAMPS)/python: pyproject.toml constraints.txt
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

$(STAMPS)/node: package.json package-lock.json
	@mkdir -p $(STAMPS)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# opencode for `agentserver connect --auto-start` and the e2e tests; installed apart from package-lock.json
# because npm ci cannot lock its per-platform optional packages.
$(STAMPS)/opencode: Makefile
	@mkdir -p $(STAMPS) .tools/opencode
	npm install --no-audit --no-fund --no-save --loglevel=error --prefix .tools/opencode opencode-ai@$(OPENCODE_VERSION)
	@touch $@

# Claude Code and Codex for `agentserver connect --type claudecode|codex` and the harness tests, pinned like
# opencode. Both npm packages carry a native binary (Codex's in its per-platform optional package).
$(STAMPS)/claude-code: Makefile
	@mkdir -p $(STAMPS) $(TOOLS)/claude-code
	npm install --no-audit --no-fund --no-save --loglevel=error --prefix $(TOOLS)/claude-code @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	@touch $@

$(STAMPS)/codex: Makefile
	@mkdir -p $(STAMPS) $(TOOLS)/codex
	npm install --no-audit --no-fund --no-save --loglevel=error --prefix $(TOOLS)/codex @openai/codex@$(CODEX_VERSION)
	@touch $@

# The web console: npm ci from web/package-lock.json, then a Vite build into web/dist whenever a source
# is newer than the build (or there is no build).
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json

$(STAMPS)/web-deps: web/package.json web/package-lock.json
	@mkdir -p $(STAMPS)
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web/dist/index.html: $(STAMPS)/web-deps $(WEB_SOURCES)
	cd web && npm run --silent build

# Local cloud sandboxes run isolated under bubblewrap (docs/sandboxes.md, "Local backend isolation").
$(STAMPS)/bubblewrap:
	@mkdir -p $(STAMPS)
	@if command -v bwrap >/dev/null; then echo "bubblewrap: $$(bwrap --version)"; \
	else echo "installing bubblewrap to isolate local sandboxes"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; fi
	@touch $@

web: web/dist/index.html

# The browser tests drive Debian's Chromium (Playwright's own browser downloads are not used).
$(STAMPS)/chromium:
	@mkdir -p $(STAMPS)
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	else echo "installing Chromium for the browser tests"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
	@touch $@

up: install web
	$(VENV)/bin/agentserver up --port $(PORT)

up-memory: install web
	$(VENV)/bin/agentserver up --port $(PORT) --in-memory

test: install web $(STAMPS)/chromium
	$(PY) -m pytest --durations=25 $(wildcard tests/unit tests/infra tests/integration tests/e2e tests/browser)

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install
	$(PY) -m pytest tests/integration

# Unit and integration tests in a random order (pytest-randomly; `make test` keeps the file order).
# It prints its seed; `make test-shuffled SEED=n` repeats that order.
test-shuffled: install
	$(PY) -m pytest -p randomly $(if $(SEED),--randomly-seed=$(SEED)) tests/unit tests/integration

test-infra: install
	$(PY) -m pytest tests/infra

test-e2e: install
	$(PY) -m pytest tests/e2e

test-browser: install web $(STAMPS)/chromium
	$(PY) -m pytest tests/browser

synth: install
	npx cdk synth --quiet

bench: install
	$(PY) bench/local_gateway.py
	$(PY) bench/auth.py
	$(PY) bench/tunnel.py
	$(PY) bench/sandboxes.py
	$(PY) bench/llm_proxy.py
	$(PY) bench/mailboxes.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(STAMPS) cdk.out .pytest_cache web/dist
