#!/usr/bin/env bash
# Builds the image and release tools — umoci (OCI image layouts without a container engine) and
# actionlint (GitHub Actions workflow linter) — from their own modules e2e/tools/{umoci,actionlint},
# once, into a cache outside the repository keyed by those go.mod/go.sum files and this script.
# Separate from build-tools.sh so that changing them never rebuilds the control-plane tools.
# Prints the directory holding the binaries on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/../tools"
cache="${GPUPOOL_CACHE:-$HOME/.cache/gpupool}"
names=(umoci actionlint)
key="$(for n in "${names[@]}"; do cat "$tools/$n/go.mod" "$tools/$n/go.sum"; done | cat - "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
bin="$cache/release-tools/$key/bin"
have=1
for n in "${names[@]}"; do [[ -x "$bin/$n" ]] || have=0; done
if [[ $have == 1 ]]; then
  echo "$bin"; exit 0
fi
command -v go >/dev/null || { echo "build-release-tools: Go is required (apt-get install golang-go)" >&2; exit 1; }
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$cache/go/mod}" GOCACHE="${GOCACHE_OVERRIDE:-$cache/go/build}" GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0
mkdir -p "$bin.tmp"
pkgs=(
  "umoci=github.com/opencontainers/umoci/cmd/umoci"
  "actionlint=github.com/rhysd/actionlint/cmd/actionlint"
)
for p in "${pkgs[@]}"; do
  name="${p%%=*}"; pkg="${p#*=}"
  [[ -x "$bin.tmp/$name" ]] && continue
  echo "build-release-tools: building $name ($pkg), cached in $cache/release-tools/$key" >&2
  (cd "$tools/$name" && go build -trimpath -ldflags="-s -w" -o "$bin.tmp/$name" "$pkg") >&2
done
rm -rf "$bin"; mv "$bin.tmp" "$bin"
echo "$bin"
