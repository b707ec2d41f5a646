# syntax=docker/dockerfile:1.7
# gpupool node agent image (`gpupool-agent`). Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t ghcr.io/gpupool/gpupool-agent:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gpupool-operator --bin gpupool-agent \
 && install -D -m 0755 target/release/gpupool-agent /out/gpupool-agent

# debian-slim rather than distroless: the agent dlopen()s the driver's libnvidia-ml.so.1, which the
# NVIDIA container runtime injects into the container and registers by running the image's
# ldconfig (distroless has none, so the library would not be found). The image ships no NVIDIA
# bits itself: the library always comes from the host driver.
FROM debian:bookworm-slim
# Tells the NVIDIA container runtime what to inject when the chart does not set it. The library
# path lets dlopen() find the injected library even where ld.so.cache could not be refreshed
# (e.g. a read-only root filesystem).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu
COPY --from=build /out/gpupool-agent /usr/local/bin/gpupool-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gpupool-agent"]
