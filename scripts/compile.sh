#!/usr/bin/env bash
# Builds the package into the venv in $1 with the request path compiled by mypyc (setup.py),
# and says so loudly when mypyc refuses: the first error lines, then
#   - on_failure=fail (make test): exit 1, unless CLERK_AUTH_PROXY_PURE=1 asked for pure Python;
#   - on_failure=pure (make demo): a pure-Python build, with a banner saying it is the slow one.
# isolation=isolated builds in pip's own build environment pinned by the lock (PIP_CONSTRAINT),
# so a venv holding only the runtime dependencies (the demo's) can still compile;
# isolation=venv builds with the venv's own, locked, build tools (the test venv has them).
set -euo pipefail
venv=$1 on_failure=$2 isolation=$3
log=$venv/build.log
args=(--quiet --no-deps -e .)
if [ "$isolation" = venv ]; then
	args+=(--no-build-isolation)
else
	# pip refuses hashes in a constraints file that covers only part of what it installs
	# (the project itself has none), so the build environment is pinned by version.
	grep -E '^[A-Za-z0-9]' requirements/build.txt | sed 's/ *\\$//' > "$venv/build-constraints.txt"
	export PIP_CONSTRAINT=$venv/build-constraints.txt
fi
if [ "${CLERK_AUTH_PROXY_PURE:-}" = 1 ]; then
	echo "clerk-auth-proxy: CLERK_AUTH_PROXY_PURE=1: building the pure-Python request path (slower; asked for)" >&2
	"$venv/bin/python" -m pip install "${args[@]}"
	exit 0
fi
if CLERK_AUTH_PROXY_REQUIRE_COMPILED=1 "$venv/bin/python" -m pip install "${args[@]}" >"$log" 2>&1; then
	"$venv/bin/python" -P -c 'import proxy, sys; sys.exit(0 if proxy.compiled() else 1)' || {
		echo "clerk-auth-proxy: the build finished but proxy.compiled() is False ($log)" >&2
		exit 1
	}
	exit 0
fi
{
	echo
	echo "clerk-auth-proxy: mypyc could not compile the request path. The first errors ($log):"
	grep -E 'error:|Error|REQUIRE_COMPILED' "$log" | grep -v '^WARNING' | head -n 12 | sed 's/^/    /'
	echo
} >&2
if [ "$on_failure" = pure ]; then
	echo "clerk-auth-proxy: building the PURE-PYTHON request path instead: about twice the CPU per request." >&2
	CLERK_AUTH_PROXY_PURE=1 "$venv/bin/python" -m pip install "${args[@]}"
	exit 0
fi
echo "clerk-auth-proxy: make test fails here. Fix the errors above, or run CLERK_AUTH_PROXY_PURE=1 make test to test the pure-Python build on purpose." >&2
exit 1
