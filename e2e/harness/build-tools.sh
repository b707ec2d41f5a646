#!/usr/bin/env bash
# Builds the pinned upstream control-plane tools (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager, kubectl, KWOK, Helm) from e2e/tools/go.mod, and promtool from its own
# module e2e/tools/promtool/go.mod, once, into a cache outside the repository keyed by the hash of
# those go.mod/go.sum files and this script (its build flags are part of the key).
# Prints the directory holding the binaries on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/../tools"
cache="${GPUPOOL_CACHE:-$HOME/.cache/gpupool}"
key="$(cat "$tools/go.mod" "$tools/go.sum" "$tools/promtool/go.mod" "$tools/promtool/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
bin="$cache/tools/$key/bin"
names=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl kwok helm promtool)
have=1
for n in "${names[@]}"; do [[ -x "$bin/$n" ]] || have=0; done
if [[ $have == 1 ]]; then
  echo "$bin"; exit 0
fi
command -v go >/dev/null || { echo "build-tools: Go is required to build the control plane (apt-get install golang-go or https://go.dev/dl)" >&2; exit 1; }
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$cache/go/mod}" GOCACHE="${GOCACHE_OVERRIDE:-$cache/go/build}" GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0
mkdir -p "$bin.tmp"
# Reuse binaries a previous build of the same key already made (an interrupted build).
[[ -d "$bin" ]] && cp -n "$bin"/* "$bin.tmp"/ 2>/dev/null || true
cd "$tools"
# Stamp the Kubernetes binaries with the release they are built from: a plain `go build` of the
# module reports v0.0.0-master+$Format:%H$, which clients that parse the server version refuse.
kver="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' go.mod)"
kmajor="${kver#v}"; kmajor="${kmajor%%.*}"
kminor="${kver#v*.}"; kminor="${kminor%%.*}"
kstamp="-X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=$kmajor -X k8s.io/component-base/version.gitMinor=$kminor -X k8s.io/component-base/version.gitTreeState=clean"
kstamp="$kstamp -X k8s.io/client-go/pkg/version.gitVersion=$kver -X k8s.io/client-go/pkg/version.gitMajor=$kmajor -X k8s.io/client-go/pkg/version.gitMinor=$kminor -X k8s.io/client-go/pkg/version.gitTreeState=clean"
pkgs=(
  "etcd=go.etcd.io/etcd/server/v3"
  "kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler"
  "kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager"
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
  ldflags="-s -w"
  [[ $pkg == k8s.io/kubernetes/* ]] && ldflags="$ldflags $kstamp"
  if [[ "$name" == promtool ]]; then
    # Its own module; no service-discovery plugins (only rule and PromQL checks are needed).
    (cd "$tools/promtool" && go build -tags remove_all_sd -trimpath -ldflags="$ldflags" -o "$bin.tmp/$name" "$pkg") >&2
  else
    go build -trimpath -ldflags="$ldflags" -o "$bin.tmp/$name" "$pkg" >&2
  fi
  echo "build-tools: [$i/${#pkgs[@]}] $name built in $((SECONDS-start))s" >&2
done
rm -rf "$bin"; mv "$bin.tmp" "$bin"
echo "$bin"
