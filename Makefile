# The two commands: `make run` serves the app, `make test` passes the tests.
# Both do every set-up step themselves (virtual environment, dependencies, migrations, browser).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format venv services chromium clean

run: $(STAMP)
	$(BIN)/dreambooth serve

test: lint chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Style is settled by ruff (configured in pyproject.toml); `make format` applies it.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

venv: $(STAMP)

# Re-installs whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $@

# Browser tests drive Debian's Chromium (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Start the local Postgres and Redis when they are down (CI does this before `make test`).
services:
	scripts/ensure-services

clean:
	rm -rf $(VENV) data .pytest_cache test-output
