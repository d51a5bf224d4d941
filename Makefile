# The two commands: `make run` serves the app, `make test` passes the tests.
# Both do every set-up step themselves (virtual environment, dependencies, migrations, browser).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# An older stack many users pin (transformers 4.x, diffusers from before transformers 5), that every
# download must load in too (tests/compat)
COMPAT := .venv-compat
COMPAT_STAMP := $(COMPAT)/.installed

.PHONY: run test lint format venv compat services chromium docker-compose lock clean

run: $(STAMP)
	$(BIN)/dreambooth serve

test: lint chromium docker-compose $(COMPAT_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Style is settled by ruff (configured in pyproject.toml); `make format` applies it.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

venv: $(STAMP)

compat: $(COMPAT_STAMP)

# The original Stable Diffusion code (stable-diffusion-sdkit's ldm) comes without its pinned dependencies:
# the tests only build its modules to read their weights' names and shapes.
$(COMPAT_STAMP): tests/compat/requirements.txt
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT)/bin/python -m pip install --quiet -r tests/compat/requirements.txt
	$(COMPAT)/bin/python -m pip install --quiet --no-deps stable-diffusion-sdkit==2.1.5
	touch $@

# Re-installs whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $@

# Browser tests drive Debian's Chromium (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# tests/deploy validate docker-compose.yml with Debian's docker-compose (`config` needs no Docker daemon).
docker-compose:
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)

# The images' pinned requirements (requirements/api.txt for Dockerfile, requirements/worker.txt for
# Dockerfile.gpu, each for its image's Python), at the versions this venv tests: run it after changing
# pyproject.toml's dependencies (tests/deploy fails until then). torch comes from PyTorch's index instead.
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command 'make lock' -c $(VENV)/tested.txt
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v ' @ ' | sed 's/+[^ ]*$$//' > $(VENV)/tested.txt
	UV_PYTHON_DOWNLOADS=never $(LOCK) --python-version 3.11 -o requirements/api.txt
	UV_PYTHON_DOWNLOADS=never $(LOCK) --python-version 3.12 --extra worker --no-emit-package torch -o requirements/worker.txt

# Start the local Postgres and Redis when they are down (CI does this before `make test`).
services:
	scripts/ensure-services

clean:
	rm -rf $(VENV) $(COMPAT) data .pytest_cache test-output
