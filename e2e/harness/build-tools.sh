#!/usr/bin/env bash
# Builds the pinned upstream control-plane tools (etcd, kube-apiserver, kubectl, KWOK, Helm) from
# e2e/tools/go.mod, and promtool from its own module e2e/tools/promtool/go.mod, once, into a cache
# outside the repository keyed by the hash of those go.mod/go.sum files.
# Prints the directory holding the binaries on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/../tools"
cache="${GPUPOOL_CACHE:-$HOME/.cache/gpupool}"
key="$(cat "$tools/go.mod" "$tools/go.sum" "$tools/promtool/go.mod" "$tools/promtool/go.sum" | sha256sum | cut -c1-16)"
bin="$cache/tools/$key/bin"
if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" && -x "$bin/kubectl" && -x "$bin/kwok" && -x "$bin/helm" && -x "$bin/promtool" ]]; then
  echo "$bin"; exit 0
fi
command -v go >/dev/null || { echo "build-tools: Go is required to build the control plane (apt-get install golang-go or https://go.dev/dl)" >&2; exit 1; }
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$cache/go/mod}" GOCACHE="${GOCACHE_OVERRIDE:-$cache/go/build}" GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0
mkdir -p "$bin.tmp"
# Reuse binaries a previous build of the same key already made.
[[ -d "$bin" ]] && cp -n "$bin"/* "$bin.tmp"/ 2>/dev/null || true
cd "$tools"
pkgs=(
  "etcd=go.etcd.io/etcd/server/v3"
  "kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver"
  "kubectl=k8s.io/kubernetes/cmd/kubectl"
  "kwok=sigs.k8s.io/kwok/cmd/kwok"
  "helm=helm.sh/helm/v3/cmd/helm"
  "promtool=github.com/prometheus/prometheus/cmd/promtool"
)
i=0
for p in "${pkgs[@]}"; do
  i=$((i+1)); name="${p%%=*}"; pkg="${p#*=}"
  if [[ -x "$bin.tmp/$name" ]]; then continue; fi
  echo "build-tools: [$i/${#pkgs[@]}] building $name ($pkg) — first run only, cached in $cache/tools/$key" >&2
  start=$SECONDS
  if [[ "$name" == promtool ]]; then
    # Its own module; no service-discovery plugins (only rule and PromQL checks are needed).
    (cd "$tools/promtool" && go build -tags remove_all_sd -trimpath -ldflags="-s -w" -o "$bin.tmp/$name" "$pkg") >&2
  else
    go build -trimpath -ldflags="-s -w" -o "$bin.tmp/$name" "$pkg" >&2
  fi
  echo "build-tools: [$i/${#pkgs[@]}] $name built in $((SECONDS-start))s" >&2
done
rm -rf "$bin"; mv "$bin.tmp" "$bin"
echo "$bin"
