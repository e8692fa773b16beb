#!/usr/bin/env bash
# `make image`: builds the Dockerfile into $IMAGE (default localhost/clerk-auth-proxy:dev)
# and writes what `make image-smoke` needs (how to run the engine, the timings, the size)
# to build/image/build.json.
#
# Engine: docker where a docker engine answers, else podman (apt-get installs it when
# missing and we are root). Podman runs with `--runtime runc` and explicit ulimits: its
# default RLIMIT_NOFILE (1048576) is above the hard limit of some machines, and conmon
# holds RLIMIT_NPROC at pid_max, so the runtime refuses to start a container asking more.
#
# Bases, IMAGE_BASES=registry|debian|auto (default auto):
#   registry  the Dockerfile's defaults (python:3.11-bookworm, python:3.11-slim-bookworm);
#   debian    stand-ins made with mmdebstrap from Debian bookworm packages (the same Debian
#             release, and its python3 is 3.11 too), imported as local images and passed
#             as BUILD_IMAGE / PYTHON_IMAGE; cached under a tag naming their recipe, so
#             they are made again only when missing or when the recipe below changes;
#   auto      registry when both bases pull, else debian, saying why.
#
# pip in the build stage reaches the package index as this machine's pip does: the index
# URLs, trusted hosts, proxy, timeout and CA bundle of this machine's pip config go in as
# build secrets, mounted for the one RUN that downloads (in no layer; the runtime stage
# never sees them). Paths on this machine (file:// indexes, find-links, constraints) stay
# out: the build stage installs the lock's hashes from the index, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/clerk-auth-proxy:dev}
IMAGE_BASES=${IMAGE_BASES:-auto}
HOST_PYTHON=${HOST_PYTHON:-python3}
OUT=build/image
SUITE=bookworm
MIRRORS=(
	"deb http://deb.debian.org/debian $SUITE main"
	"deb http://deb.debian.org/debian $SUITE-updates main"
	"deb http://deb.debian.org/debian-security $SUITE-security main"
)
# The full image's part: a compiler and Python's headers for mypyc, venv with ensurepip.
BUILD_PACKAGES=python3,python3-venv,python3-dev,gcc,libc6-dev,python-is-python3,ca-certificates
# The slim image's part: Python (venv --without-pip needs nothing more), no compiler;
# ca-certificates for the proxy's own HTTPS calls to Clerk.
RUNTIME_PACKAGES=python3,python-is-python3,ca-certificates
# Documentation, manuals and translations: nothing in the image reads them.
DPKG_OPTS=(
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/locale/*'
)
BASE_ENV=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
	--change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')

say() { echo "image: $*" >&2; }
die() {
	say "$*"
	exit 1
}
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

APT_UPDATED=
need() { # need COMMAND PACKAGE...: installs the packages when COMMAND is missing
	local command=$1
	shift
	command -v "$command" >/dev/null && return 0
	if [ "$(id -u)" != 0 ]; then
		die "$command is missing: apt-get install $* (as root), then run this again"
	fi
	say "$command is missing: apt-get install $*"
	if [ -z "$APT_UPDATED" ]; then
		apt-get update -qq
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- engine ------------------------------------------------------------------------------

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
	ENGINE=(docker)
	RUN_FLAGS=()
else
	if command -v docker >/dev/null; then
		say "docker is only a client here (docker info: no engine answers): using podman"
	fi
	# uidmap, slirp4netns and fuse-overlayfs for rootless podman; the network plugins and
	# iptables for its default bridge network.
	need podman podman runc uidmap slirp4netns fuse-overlayfs containernetworking-plugins iptables
	need runc runc
	pid_max=$(cat /proc/sys/kernel/pid_max)
	nproc=$(ulimit -Hu)
	if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
	nofile=$(ulimit -Hn)
	if [ "$nofile" = unlimited ]; then nofile=$(cat /proc/sys/fs/nr_open); fi
	ENGINE=(podman --runtime runc)
	RUN_FLAGS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
fi
# The host's network for the build: pip reaches the index exactly as this machine does.
BUILD_FLAGS=(--network host "${RUN_FLAGS[@]}")

# --- bases -------------------------------------------------------------------------------

default_base() { sed -n "s/^ARG $1=//p" Dockerfile; }

pulls() {
	local base
	for base in "$@"; do
		# Fully qualified: podman would otherwise ask which registry a short name means.
		case $base in */*) ;; *) base=docker.io/library/$base ;; esac
		"${ENGINE[@]}" pull --quiet "$base" >/dev/null 2>"$OUT/pull.log" || return 1
	done
}

# base_tag ROLE PACKAGES: a stand-in base's tag, naming its recipe.
base_tag() {
	local recipe
	recipe=$(printf '%s\n' "$SUITE" "${MIRRORS[@]}" "$2" "${DPKG_OPTS[@]}" "${BASE_ENV[@]}" |
		sha256sum | cut -c1-12)
	echo "localhost/clerk-auth-proxy-base:$1-$SUITE-$recipe"
}

# debian_base ROLE PACKAGES: makes the stand-in base when its tag is missing.
MADE=()
debian_base() {
	local role=$1 packages=$2 tag debs=$PWD/$OUT/debs
	tag=$(base_tag "$role" "$packages")
	"${ENGINE[@]}" image inspect "$tag" >/dev/null 2>&1 && return 0
	need mmdebstrap mmdebstrap
	say "making the stand-in $role base $tag from Debian $SUITE: $packages"
	mkdir -p "$debs"
	# The downloaded .debs are kept in build/image/debs: the second base (and a remade
	# one) downloads only what the first did not. --skip=essential/unlink keeps the
	# Essential packages' .debs there too, for the sync-out. A hook's "$1" is the chroot.
	# shellcheck disable=SC2016
	if ! mmdebstrap --quiet --variant=essential --include="$packages" "${DPKG_OPTS[@]}" \
		--skip=essential/unlink \
		--setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
		--setup-hook="sync-in $debs /var/cache/apt/archives/" \
		--customize-hook="sync-out /var/cache/apt/archives $debs" \
		"$SUITE" - "${MIRRORS[@]}" |
		"${ENGINE[@]}" import "${BASE_ENV[@]}" - "$tag" >/dev/null; then
		# A cut-short tarball may still have been imported: never cache it.
		"${ENGINE[@]}" rmi --force "$tag" >/dev/null 2>&1 || true
		die "making the $role base failed (mmdebstrap's messages above)"
	fi
	MADE+=("$role")
}

mkdir -p "$OUT"
BASE_ARGS=()
bases_started=$(now)
case $IMAGE_BASES in
registry)
	pulls "$(default_base BUILD_IMAGE)" "$(default_base PYTHON_IMAGE)" ||
		die "IMAGE_BASES=registry, and a base did not pull: $(tail -n 3 "$OUT/pull.log")"
	bases=registry
	;;
auto | debian)
	bases=debian
	if [ "$IMAGE_BASES" = auto ]; then
		if pulls "$(default_base BUILD_IMAGE)" "$(default_base PYTHON_IMAGE)"; then
			bases=registry
		else
			say "no registry reachable ($(tail -n 1 "$OUT/pull.log")):"
			say "  stand-in bases from Debian $SUITE packages instead (IMAGE_BASES=registry refuses this)"
		fi
	fi
	if [ "$bases" = debian ]; then
		debian_base build "$BUILD_PACKAGES"
		debian_base runtime "$RUNTIME_PACKAGES"
		BASE_ARGS=(--build-arg "BUILD_IMAGE=$(base_tag build "$BUILD_PACKAGES")"
			--build-arg "PYTHON_IMAGE=$(base_tag runtime "$RUNTIME_PACKAGES")")
	fi
	;;
*) die "IMAGE_BASES=$IMAGE_BASES: expected registry, debian or auto" ;;
esac
bases_seconds=$(since "$bases_started")
say "bases: $bases (${bases_seconds} s${MADE[*]:+, made: ${MADE[*]}}) ${BASE_ARGS[*]}"

# --- pip's config for the build stage ----------------------------------------------------

SECRETS=$(mktemp -d)
trap 'rm -rf "$SECRETS"' EXIT
SECRET_ARGS=()
if "$HOST_PYTHON" -m pip --version >/dev/null 2>&1; then
	# `pip config list` names each setting section.key (":env:" for PIP_* variables), which
	# override in the order global < install/download/wheel < :env:, as pip applies them.
	ca=$("$HOST_PYTHON" -m pip config list | "$HOST_PYTHON" -c '
import ast, sys
rank = {"global": 0, "install": 1, "download": 1, "wheel": 1, ":env:": 2}
alias = {"default-timeout": "timeout", "index": "index-url", "extra-index": "extra-index-url"}
forward = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries", "cert")
found: dict[str, tuple[int, str]] = {}
for line in sys.stdin:
    name, _, value = line.rstrip("\n").partition("=")
    section, _, key = name.rpartition(".")
    key = alias.get(key, key)
    if section in rank and (key not in found or rank[section] >= found[key][0]):
        found[key] = (rank[section], ast.literal_eval(value))
settings = {k: v for k, (_, v) in found.items()}
for key in sorted(set(settings) - set(forward)):
    print(f"image: pip config {key} stays out of the build (a setting of this machine)", file=sys.stderr)
for key in ("index-url", "extra-index-url"):
    urls = settings.pop(key, "").split()
    local = [u for u in urls if not u.startswith(("http://", "https://"))]
    for url in local:
        print(f"image: pip config {key} {url} stays out of the build (not reachable from it)", file=sys.stderr)
    if remote := [u for u in urls if u not in local]:
        settings[key] = " ".join(remote)
cert = settings.pop("cert", "")
with open(sys.argv[1], "w") as out:
    out.write("[global]\n")
    for key in forward:
        if key in settings:
            out.write(f"{key} = {settings[key]}\n")
    if cert:
        out.write("cert = /run/secrets/pip-ca\n")
print(cert)
' "$SECRETS/pip.conf")
	SECRET_ARGS=(--secret "id=pip.conf,src=$SECRETS/pip.conf")
	if [ -n "$ca" ]; then
		[ -r "$ca" ] || die "pip config cert $ca is not readable"
		SECRET_ARGS+=(--secret "id=pip-ca,src=$ca")
	fi
	# Credentials in an index URL stay out of the log.
	say "pip in the build stage: $(grep -v '^\[' "$SECRETS/pip.conf" | sed 's/ = /=/; s#//[^/@ ]*@#//***@#g' |
		tr '\n' ' ')${ca:+(CA bundle $ca)}"
else
	say "no pip for $HOST_PYTHON here: the build stage uses pip's defaults (pypi.org, the base's CA store)"
fi

# --- build -------------------------------------------------------------------------------

say "building $IMAGE with ${ENGINE[*]}"
build_started=$(now)
"${ENGINE[@]}" build --file Dockerfile --tag "$IMAGE" "${BUILD_FLAGS[@]}" "${BASE_ARGS[@]}" \
	"${SECRET_ARGS[@]}" .
build_seconds=$(since "$build_started")
size=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in ${build_seconds} s: $((size / 1000000)) MB"

"$HOST_PYTHON" -c '
import json, sys
image, bases, made, bases_s, build_s, size, n = sys.argv[1:8]
engine, run_flags = sys.argv[8 : 8 + int(n)], sys.argv[8 + int(n) :]
json.dump({"image": image, "bases": bases, "bases_made": made.split(),
           "bases_seconds": float(bases_s), "build_seconds": float(build_s),
           "size_bytes": int(size), "engine": engine, "run_flags": run_flags}, sys.stdout, indent=2)
' "$IMAGE" "$bases" "${MADE[*]}" "$bases_seconds" "$build_seconds" "$size" "${#ENGINE[@]}" \
	"${ENGINE[@]}" "${RUN_FLAGS[@]}" >"$OUT/build.json"
