#!/usr/bin/env bash
# What `make image` runs, inside `scripts/docker-engine.sh run` (which provides the engine):
# the base images (pulled, or stand-ins: scripts/base-images.sh), then the project's Dockerfile
# with the legacy builder, tagged fusion-engine:local (the tag docker-compose.yml uses). Prints
# how long each part took and the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${FUSION_IMAGE:-fusion-engine:local}

started=$SECONDS
scripts/base-images.sh
bases_s=$((SECONDS - started))

previous=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
started=$SECONDS
# The legacy builder: BuildKit wants its Dockerfile frontend (and buildx) from a registry.
DOCKER_BUILDKIT=0 docker build -t "$TAG" .
build_s=$((SECONDS - started))
current=$(docker image inspect --format '{{.Id}}' "$TAG")
# A rebuild leaves the previous image untagged: drop it, the engine's data root is kept between
# runs and would grow by one image per change.
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi

size=$(docker image inspect --format '{{.Size}}' "$TAG")
echo "image: $TAG ${current#sha256:} size $((size / 1000000)) MB;" \
  "base images ${bases_s}s, docker build ${build_s}s"
