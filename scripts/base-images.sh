#!/usr/bin/env bash
# Make the base images the Dockerfile and docker-compose.yml name available to the engine that
# DOCKER_HOST (or the default socket) reaches: python:3.11-slim, redis:7-alpine,
# prom/prometheus:v2.53.0. Run it through scripts/docker-engine.sh, as `make image` does.
#
# For each image: already present -> nothing; else `docker pull` (FUSION_PULL_TIMEOUT_S, 30 s);
# where no registry answers, build a STAND-IN under the same name, announced by a banner:
#   python:3.11-slim        debootstrap --variant=minbase bookworm with python3, python3-venv,
#                           python-is-python3, ca-certificates (Debian's Python 3.11), trimmed, with
#                           this machine's extra CAs (/usr/local/share/ca-certificates: an
#                           intercepting proxy's) installed, then `docker import`. The rootfs
#                           tarball is cached in FUSION_CACHE_HOME/standins (default
#                           ~/.cache/fusion-engine/standins) so the next run skips debootstrap.
#   redis:7-alpine          deploy/standins/redis: Debian's redis-server on the python stand-in,
#                           run like the official image (0.0.0.0, --protected-mode no, redis-cli)
#   prom/prometheus:v2.53.0 deploy/standins/prometheus: Debian's prometheus, with the official
#                           image's entrypoint, config path and storage dir
# Stand-ins carry the label org.fusion-engine.standin; `docker rmi` them to try pulling again.
# Needs root and debootstrap (Debian: apt-get install debootstrap) only to build the python one.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

PYTHON_IMAGE=python:3.11-slim
REDIS_IMAGE=redis:7-alpine
PROMETHEUS_IMAGE=prom/prometheus:v2.53.0
CACHE=${FUSION_CACHE_HOME:-${HOME:-/root}/.cache/fusion-engine}/standins
MIRROR=${FUSION_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_TIMEOUT_S=${FUSION_PULL_TIMEOUT_S:-30}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
# Bump when the recipe changes: the cached rootfs tarball is keyed by it and by the extra CAs.
RECIPE=1
LABEL=org.fusion-engine.standin

say() { echo "base-images: $*"; }

banner() {  # banner IMAGE WHAT
  cat <<EOF
################################################################################################
##  STAND-IN, not the official image: $1
##  No container registry answered, so it was built here from Debian packages ($2).
##  Good enough for this project's build and tests; pull the real one where a registry answers
##  (docker rmi $1, then run this script again).
################################################################################################
EOF
}

present() { docker image inspect "$1" >/dev/null 2>&1; }

describe() {  # "stand-in (...)" or "official" for a present image
  local standin
  standin=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true)
  if [ -n "$standin" ] && [ "$standin" != "<no value>" ]; then echo "STAND-IN ($standin)"; else echo "pulled"; fi
}

try_pull() {
  say "pulling $1 (timeout ${PULL_TIMEOUT_S}s)"
  if timeout "$PULL_TIMEOUT_S" docker pull --quiet "$1" >/dev/null 2>"$CACHE/pull.err"; then
    say "pulled $1"
    return 0
  fi
  say "cannot pull $1: $(tail -n 1 "$CACHE/pull.err")"
  return 1
}

python_rootfs_tarball() {  # prints the cached tarball's path, building it when missing
  local key tarball rootfs started
  key=$( { echo "$RECIPE $PACKAGES $MIRROR"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; } | sha256sum | cut -c1-12)
  tarball="$CACHE/python-3.11-bookworm-$key.tar"
  if [ -s "$tarball" ]; then
    say "cached rootfs $tarball: debootstrap skipped" >&2
    echo "$tarball"; return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || { say "debootstrap is missing (Debian: apt-get install debootstrap)" >&2; return 1; }
  [ "$(id -u)" = 0 ] || { say "debootstrap needs root" >&2; return 1; }
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  # shellcheck disable=SC2064  # the path is fixed now
  trap "rm -rf '$rootfs'" EXIT
  say "debootstrap --variant=minbase bookworm ($PACKAGES) from $MIRROR: about 2-3 minutes" >&2
  started=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap.log" >&2; return 1; }
  say "debootstrap took $((SECONDS - started))s" >&2
  # The machine's extra CAs (an intercepting HTTPS proxy): pip inside builds needs them.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >>"$CACHE/debootstrap.log" 2>&1
  # Trim what a container never reads; apt lists come back with `apt-get update`.
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/debootstrap
  find "$rootfs/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} +
  # Docker provides /dev, /proc and /sys: the image carries them empty.
  tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$rootfs"
  trap - EXIT
  say "rootfs cached as $tarball ($(du -h "$tarball" | cut -f1))" >&2
  echo "$tarball"
}

standin_python() {
  local tarball
  tarball=$(python_rootfs_tarball)
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $LABEL=\"Debian bookworm python3 (debootstrap), scripts/base-images.sh\"" \
    --change 'CMD ["python3"]' \
    "$tarball" "$PYTHON_IMAGE" >/dev/null
  banner "$PYTHON_IMAGE" "debootstrap bookworm, Debian's Python $(docker run --rm "$PYTHON_IMAGE" python -c 'import platform; print(platform.python_version())')"
}

standin_from_dockerfile() {  # standin_from_dockerfile IMAGE FOLDER WHAT
  DOCKER_BUILDKIT=0 docker build --quiet --label "$LABEL=$3, scripts/base-images.sh" \
    -t "$1" "$2" >/dev/null
  banner "$1" "$3"
}

ensure_image() {  # ensure_image IMAGE BUILDER [ARG...]
  local image=$1 started
  shift
  if present "$image"; then
    say "$image: present, $(describe "$image")"
    return 0
  fi
  try_pull "$image" && return 0
  say "building a stand-in for $image"
  started=$SECONDS
  "$@"
  say "$image: stand-in built in $((SECONDS - started))s"
}

mkdir -p "$CACHE"
# One run at a time per machine: a second caller waits, then finds the images present.
exec 8>"$CACHE/lock"
flock 8
ensure_image "$PYTHON_IMAGE" standin_python
# The other stand-ins are built FROM python:3.11-slim (the stand-in, or the real one).
ensure_image "$REDIS_IMAGE" standin_from_dockerfile "$REDIS_IMAGE" deploy/standins/redis \
  "Debian's redis-server"
ensure_image "$PROMETHEUS_IMAGE" standin_from_dockerfile "$PROMETHEUS_IMAGE" \
  deploy/standins/prometheus "Debian's prometheus"
