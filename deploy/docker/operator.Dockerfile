# syntax=docker/dockerfile:1.7
# gpupool operator image (`gpupool run`). Build from the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/gpupool/gpupool-operator:0.1.0 .

# Debian 12 builder, so the binary's glibc matches the distroless cc-debian12 runtime.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and incremental target dir between builds; the binary is copied
# out in the same step because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gpupool-operator --bin gpupool \
 && install -D -m 0755 target/release/gpupool /out/gpupool

# glibc, libgcc, CA certificates (for the Solana RPC over TLS) and a nonroot user (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/gpupool /usr/local/bin/gpupool
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gpupool"]
CMD ["run"]
