#!/usr/bin/env bash
# Images for the node tier, built without a registry or a daemon (buildah):
#
#   1. a Debian bookworm base with Python 3.11 (debootstrap; cached in
#      buildah's storage as BASE) that stands in for python:3.11-slim, which
#      cannot be pulled here;
#   2. the pause image the Pod sandboxes run (e2e/build.sh builds the binary);
#   3. the project's images with scripts/images, FROM that base, as users
#      build them, and the example agent's (the openai SDK, examples/cluster/agent);
#
# and writes every image as a docker-archive into OUT for `ctr images import`.
#
#   e2e/node/images.sh BIN OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$1" OUT="$2"
mkdir -p "$OUT"
export STORAGE_DRIVER=overlay BUILDAH_ISOLATION=chroot
BASE=localhost/tokenomy-e2e/python:3.11-bookworm
PAUSE=localhost/tokenomy-e2e/pause:1
AGENT=localhost/tokenomy/example-agent:0.1.0
CA=/etc/ssl/certs/ca-certificates.crt
# pip inside a build trusts what the host trusts (an intercepting proxy's CA).
export TOKENOMY_BUILD_FLAGS="--pull-never -v $CA:$CA:ro -v $CA:/etc/ssl/certs/ca-certificates.crt:ro"
export PIP_CERT="$CA"

exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

if ! exists "$BASE"; then
  root="$(mktemp -d /var/tmp/tokenomy-base.XXXXXX)"
  mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$root.tar" .
  container="$(buildah from scratch)"
  buildah add "$container" "$root.tar" / >&2
  buildah config --env PATH=/usr/local/bin:/usr/bin:/bin --cmd python3 "$container"
  buildah commit --rm "$container" "$BASE" >&2
  rm -rf "$root" "$root.tar"
fi

if ! exists "$PAUSE"; then
  container="$(buildah from scratch)"
  buildah copy "$container" "$BIN/pause" /pause >&2
  buildah config --entrypoint '["/pause"]' "$container"
  buildah commit --rm "$container" "$PAUSE" >&2
fi
rm -f "$OUT/pause.tar"
buildah push "$PAUSE" "docker-archive:$OUT/pause.tar:$PAUSE" >&2

TOKENOMY_IMAGE_ENGINE=buildah TOKENOMY_IMAGE_PREFIX=localhost/tokenomy \
  TOKENOMY_BASE_IMAGE="$BASE" scripts/images --save "$OUT" >"$OUT/images.txt"

# shellcheck disable=SC2086
buildah bud --layers $TOKENOMY_BUILD_FLAGS --build-arg "BASE=$BASE" -t "$AGENT" examples/cluster/agent >&2
rm -f "$OUT/agent.tar"
buildah push "$AGENT" "docker-archive:$OUT/agent.tar:$AGENT" >&2
echo "$AGENT" >>"$OUT/images.txt"
cat "$OUT/images.txt"
