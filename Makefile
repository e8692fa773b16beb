# The two commands: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: demo test lint typecheck pytest bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP)
	$(BIN)/clerk-auth-proxy demo --config config/local.yaml

lint: $(STAMP)
	$(BIN)/ruff check proxy tests $(wildcard bench)
	$(BIN)/ruff format --check proxy

typecheck: $(STAMP)
	$(BIN)/mypy --strict proxy

pytest: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) build dist *.egg-info tests/node/node_modules .mypy_cache .ruff_cache .pytest_cache
