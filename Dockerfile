# clerk-auth-proxy: two stages. `build` turns the source into wheels (ours, with the
# request path compiled by mypyc, and every runtime dependency's); `runtime` installs those
# wheels offline into a venv and nothing else, so the final image has no compiler, no build
# backend, no pip, no pip cache and no source tree.
# Every third-party package is the lock's (requirements/*.txt, exported from uv.lock),
# hash-checked, wheels only: no step resolves anything or builds a dependency from source,
# so no isolated build environment exists that the lock would have to pin.
# `make image` builds this file and `make image-smoke` runs the result as the chart does
# (scripts/image.sh, tests/image_smoke.py; docs/deploy.md).
# No `# syntax=` line: BuildKit would pull that frontend from Docker Hub, which a machine
# without a registry cannot; the built-in one (Docker >= 20.10, buildah) has RUN --mount.

# Python 3.11: the version CI tests (and Debian bookworm's python3, so the stand-in bases
# `make image` builds without a registry match). Both stages are the same Debian release
# and Python, so the wheel compiled in the full image runs on the slim one.
ARG BUILD_IMAGE=python:3.11-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${BUILD_IMAGE} AS build
# CLERK_AUTH_PROXY_REQUIRE_COMPILED: a failed mypyc compilation fails the build, instead of
# shipping the pure-Python request path (about twice the CPU) with a line in the log.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CLERK_AUTH_PROXY_REQUIRE_COMPILED=1
WORKDIR /src
# The dependencies before the source: a change to proxy/ rebuilds from the compile on.
COPY requirements/ ./requirements/
# The build tools (bootstrap.txt: pip; build.txt: the runtime dependencies, which mypyc
# type-checks against, plus setuptools, wheel, mypy, stubs) into a venv of their own; the
# runtime dependencies' wheels and pip's wheel into /wheels for the runtime stage.
# The secrets are the building machine's pip config (its index, its CA bundle: a
# TLS-inspecting proxy, a mirror), mounted for this step only: in no layer, and absent
# (pip's defaults) when not given. scripts/image.sh passes them.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && python -m venv /opt/build \
    && /opt/build/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
        --only-binary=:all: -r requirements/bootstrap.txt \
    && /opt/build/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
        --only-binary=:all: -r requirements/build.txt \
    && /opt/build/bin/python -m pip download --no-cache-dir --require-hashes --no-deps \
        --only-binary=:all: --dest /wheels -r requirements/runtime.txt \
    && /opt/build/bin/python -m pip download --no-cache-dir --require-hashes --no-deps \
        --only-binary=:all: --dest /wheels/pip -r requirements/bootstrap.txt
COPY pyproject.toml setup.py README.md ./
COPY proxy/ ./proxy/
# --no-build-isolation: the build runs with /opt/build's locked tools (pip refuses a
# hash-pinned constraints file for an isolated build environment). --no-deps: the
# dependencies' wheels are the locked ones above.
RUN /opt/build/bin/python -m pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# No .pyc writes at run time (the root filesystem is read-only in Kubernetes); the
# install step below compiles them once, into the image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/clerk-auth-proxy
# The wheels and the lock's runtime export are bind-mounted from the build stage, not
# copied, so they never become a layer. pip runs from its own wheel (the lock's, from the
# build stage) under the venv's interpreter, so neither the venv nor the base needs a pip.
# --no-index: only what the build stage produced gets installed; the dependencies checked
# against the lock's hashes first, then our wheel, whose dependencies must then all be met.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    python -m venv --without-pip "$VIRTUAL_ENV" \
    && set -- /wheels/pip/pip-*.whl \
    && "$VIRTUAL_ENV/bin/python" "$1/pip" install --no-cache-dir --no-index \
        --find-links=/wheels --require-hashes --no-deps -r /requirements/runtime.txt \
    && "$VIRTUAL_ENV/bin/python" "$1/pip" install --no-cache-dir --no-index \
        --find-links=/wheels /wheels/clerk_auth_proxy-*.whl
# The venv's console script is the ENTRYPOINT below.
ENV PATH=/opt/clerk-auth-proxy/bin:$PATH
# Example configs for `docker run`; in Kubernetes a ConfigMap is mounted over this folder.
COPY config/ /etc/clerk-auth-proxy/
# A numeric user so Kubernetes can check runAsNonRoot without a passwd lookup.
USER 10001:10001
WORKDIR /tmp
# 8080: client traffic. 9090: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
# Exec form: the proxy is PID 1 and receives SIGTERM itself (it drains, then exits 0).
# No HEALTHCHECK: Kubernetes probes the admin port.
ENTRYPOINT ["clerk-auth-proxy"]
CMD ["run", "--config", "/etc/clerk-auth-proxy/production.yaml"]
