#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (the S3-compatible server the object-storage tests run) from the Go
# module proxy into .sluice/bin/weed. `go install pkg@version` refuses this module (its go.mod
# has replace directives), so the module is downloaded and built in a scratch copy. The binary
# is also kept under ~/.cache/sluice, so a fresh clone on the same machine only copies it.
set -euo pipefail
cd "$(dirname "$0")/.."

WEED_MODULE=github.com/seaweedfs/seaweedfs
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/weed-${WEED_VERSION}"
mkdir -p .sluice/bin

if [ -x .sluice/bin/weed ]; then exit 0; fi
if [ ! -x "$CACHE" ]; then
  echo "building SeaweedFS ${WEED_VERSION} (several minutes the first time)"
  dir=$(go mod download -json "${WEED_MODULE}@${WEED_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  scratch=$(mktemp -d)
  trap 'chmod -R u+w "$scratch"; rm -rf "$scratch"' EXIT
  cp -r "$dir/." "$scratch/"
  chmod -R u+w "$scratch"
  mkdir -p "$(dirname "$CACHE")"
  (cd "$scratch" && go build -o "$CACHE.tmp" ./weed)
  mv "$CACHE.tmp" "$CACHE"
fi
cp "$CACHE" .sluice/bin/weed
