#!/usr/bin/env bash
# `make bench`: side-by-side measurements on this machine (see docs/performance.md).
# Installs wrk, nginx and valgrind from Debian's packages when missing; everything runs on
# loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk nginx-light valgrind >/dev/null
  else
    echo "bench: wrk, nginx and valgrind are needed (apt-get install wrk nginx-light valgrind)" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m bench.harness "$@"
