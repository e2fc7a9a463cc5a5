# Conveyor: `make dev` runs the service, `make test` runs the tests. Both set up what they need.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install services dev test test-fast test-compose lint format loadtest locust clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./clients/python
	touch $@

services:
	scripts/services.sh

dev: install services
	$(BIN)/conveyor dev

test: install services
	scripts/test-tools.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not faults and not browser and not compose" $(PYTEST_ARGS)

# docker-compose.yml for real; starts a Docker engine if none answers (as root), stops it after.
test-compose: install
	$(BIN)/python -m pytest tests/compose $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check src tests bench examples clients/python/src
	$(BIN)/ruff check src tests bench examples clients/python/src
	$(BIN)/mypy
	$(BIN)/mypy examples
	$(BIN)/mypy clients/python/src
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests bench examples clients/python/src
	$(BIN)/ruff check --fix src tests bench examples clients/python/src

loadtest: install
	$(BIN)/conveyor loadtest

locust: install
	$(BIN)/python -m pip install --quiet -e '.[load]'
	$(BIN)/locust -f locustfile.py --host http://127.0.0.1:8000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
