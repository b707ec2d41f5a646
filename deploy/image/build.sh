#!/usr/bin/env bash
# Builds the gpupool images as OCI image layouts, without a container engine: each image is one
# layer holding the binary on a minimal root filesystem assembled from Debian packages (glibc,
# libgcc, CA certificates; the agent also gets ldconfig, which the NVIDIA container runtime runs
# to register the driver library it injects), written by umoci.
#
#   deploy/image/build.sh [--bin-dir DIR] [--out DIR] [--version V] [--arch amd64|arm64]
#
#   --bin-dir  directory holding the `gpupool` and `gpupool-agent` binaries
#              (default: build them with `cargo build --release --locked`)
#   --out      where the layouts go: OUT/gpupool-operator and OUT/gpupool-agent (default: target/images)
#   --version  image tag and org.opencontainers.image.version (default: the workspace's version)
#   --arch     OCI architecture of the binaries (default: this machine's)
#
# Reproducible: every file's mtime and the image's creation time are SOURCE_DATE_EPOCH (default:
# the last commit's time), packages are the versions apt resolves (recorded as a label), and the
# layer tar is written in a fixed order; the same inputs give the same digests.
# Push a layout to a registry with any OCI tool, e.g.:
#   skopeo copy oci:target/images/gpupool-operator:0.1.0 docker://REGISTRY/gpupool-operator:0.1.0
#   crane push target/images/gpupool-operator REGISTRY/gpupool-operator:0.1.0
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin_dir="" out="$root/target/images" version="" arch=""
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build.sh: $*" >&2; exit 1; }
for t in apt-get dpkg-deb sha256sum; do command -v "$t" >/dev/null || die "$t is required (a Debian or Ubuntu machine)"; done
[[ -n "$arch" ]] || arch="$(dpkg --print-architecture)"
case "$arch" in amd64|arm64) ;; *) die "--arch must be amd64 or arm64, not $arch" ;; esac
[[ -n "$version" ]] || version="$(awk -F'"' '/^\[workspace.package\]/ { w = 1 } w && /^version *=/ { print $2; exit }' "$root/Cargo.toml")"
[[ -n "$version" ]] || die "no --version and none found in Cargo.toml [workspace.package]"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
umoci="${UMOCI:-$(bash "$root/e2e/harness/build-release-tools.sh")/umoci}"
[[ -x "$umoci" ]] || die "umoci not found ($umoci)"

if [[ -z "$bin_dir" ]]; then
  echo "build.sh: building release binaries (cargo build --release --locked)" >&2
  cargo build --release --locked -p gpupool-operator --bin gpupool --bin gpupool-agent >&2
  bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
fi
for b in gpupool gpupool-agent; do [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b is missing"; done

work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
# Debian packages the runtime needs, for the target architecture.
debs="$work/debs"; mkdir -p "$debs"
fetch() { (cd "$debs" && apt-get download -q "${@/%/:$arch}" >&2) || die "apt-get download $* failed (run apt-get update; for another --arch: dpkg --add-architecture $arch)"; }
fetch libc6 libgcc-s1 ca-certificates libc-bin
packages="$(cd "$debs" && for d in *.deb; do dpkg-deb -f "$d" Package Version | paste -sd= -; done | paste -sd, -)"

# rootfs NAME BINARY [extra packages...]: the binary in /usr/local/bin on glibc, libgcc and CA
# certificates, a nonroot user (65532) and a writable /tmp.
rootfs() {
  local dir="$work/$1/rootfs" binary="$2"; shift 2
  mkdir -p "$dir"
  for p in libc6 libgcc-s1 ca-certificates "$@"; do dpkg-deb -x "$debs/${p}_"*.deb "$dir"; done
  # Only what runs: no docs, locales, man pages or package scripts.
  rm -rf "$dir"/usr/share/{doc,man,info,lintian,locale}
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/usr/local/bin"
  # What update-ca-certificates would write: every Mozilla root, in a fixed order.
  find "$debs" -name 'ca-certificates_*.deb' -exec dpkg-deb --fsys-tarfile {} \; \
    | tar -x -O --wildcards './usr/share/ca-certificates/mozilla/*.crt' > "$dir/etc/ssl/certs/ca-certificates.crt"
  [[ -s "$dir/etc/ssl/certs/ca-certificates.crt" ]] || die "no CA certificates extracted"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$dir/etc/group"
  printf 'hosts: files dns\n' > "$dir/etc/nsswitch.conf"
  mkdir -p "$dir/home/nonroot"
  chmod 1777 "$dir/tmp"
  install -m 0755 "$bin_dir/$binary" "$dir/usr/local/bin/$binary"
  chown -R 0:0 "$dir"; chown 65532:65532 "$dir/home/nonroot"
  find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# image NAME BINARY TITLE -- umoci config flags...
image() {
  local name="$1" binary="$2" title="$3"; shift 4
  local layout="$out/$name" ref="$out/$name:$version"
  rm -rf "$layout"; mkdir -p "$out"
  "$umoci" init --layout "$layout"
  "$umoci" new --image "$ref"
  "$umoci" insert --image "$ref" --history.created "$created" --history.created_by "deploy/image/build.sh" \
    "$work/$name/rootfs" /
  "$umoci" config --image "$ref" --os linux --architecture "$arch" --created "$created" \
    --history.created "$created" --history.created_by "deploy/image/build.sh (config)" \
    --config.user 65532:65532 --config.workingdir / \
    --config.env "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
    --config.env "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --config.label "org.opencontainers.image.title=$title" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.created=$created" \
    --config.label "org.opencontainers.image.source=https://github.com/gpupool/gpupool" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "io.gpupool.debian-packages=$packages" \
    "$@"
  "$umoci" gc --layout "$layout"
  echo "$name:$version $(grep -o '"digest":"sha256:[0-9a-f]*"' "$layout/index.json" | head -1 | cut -d'"' -f4)"
}

rootfs gpupool-operator gpupool
image gpupool-operator gpupool gpupool-operator -- \
  --config.entrypoint /usr/local/bin/gpupool --config.cmd run --config.exposedports 8080/tcp
rootfs gpupool-agent gpupool-agent libc-bin
image gpupool-agent gpupool-agent gpupool-agent -- \
  --config.entrypoint /usr/local/bin/gpupool-agent \
  --config.env NVIDIA_VISIBLE_DEVICES=all --config.env NVIDIA_DRIVER_CAPABILITIES=utility \
  --config.env "LD_LIBRARY_PATH=/usr/lib/$( [[ $arch == amd64 ]] && echo x86_64 || echo aarch64 )-linux-gnu"
