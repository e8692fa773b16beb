# syntax=docker/dockerfile:1.7
# clerk-auth-proxy: two stages. `build` turns the source into wheels (ours, with the
# request path compiled by mypyc, and every dependency's); `runtime` installs those wheels
# offline into a venv and nothing else, so the final image has no compiler, no build
# backend, no pip cache and no source tree.
# tests/test_deploy.py replays both stages' COPY/RUN steps into a clean virtualenv.

# The build stage needs a C compiler (the full image has one); both are the same Debian
# release and Python, so the compiled wheel runs on the slim one.
ARG BUILD_IMAGE=python:3.12-bookworm
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${BUILD_IMAGE} AS build
# CLERK_AUTH_PROXY_REQUIRE_COMPILED: a failed mypyc compilation fails the build, instead of
# shipping the pure-Python request path (about twice the CPU) with a line in the log.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CLERK_AUTH_PROXY_REQUIRE_COMPILED=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy/ ./proxy/
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# No .pyc writes at run time (the root filesystem is read-only in Kubernetes); the
# install step below compiles them once, into the image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/clerk-auth-proxy
# The wheels are bind-mounted from the build stage, not copied, so they never become a
# layer. --no-index: only what the build stage produced gets installed. The venv has no
# pip of its own.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir --no-index \
        --find-links=/wheels /wheels/clerk_auth_proxy-*.whl
# Only now: with the venv first on PATH earlier, `python -m pip` above would have found
# the venv's pip-less interpreter.
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
