# syntax=docker/dockerfile:1
#
# The webrtc-egress image: one binary for every role (`operator`, `agent`, `serve`), plus the
# FFmpeg it drives. The Helm chart's default image is built from this file:
#
#   docker build -t ghcr.io/dragonfork/webrtc-egress:0.1.0 .
#
# (the tag is the chart's appVersion, which follows Cargo.toml's version).

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

# --- build ------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between builds; the
# binary is copied out of the cached target directory, which is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin webrtc-egress \
 && install -D -m 0755 target/release/webrtc-egress /out/webrtc-egress

# --- runtime ----------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# ffmpeg: Debian's build carries libx264 and libopus, the encoders the egress uses.
# ca-certificates: TLS to the API server's and inputs' (HLS over HTTPS, RTMPS) CAs.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
        --shell /usr/sbin/nologin nonroot
COPY --from=build /out/webrtc-egress /usr/local/bin/webrtc-egress
# The pods run with a read-only root filesystem; the egress pods mount an emptyDir at /tmp.
ENV HOME=/home/nonroot TMPDIR=/tmp
USER 65532:65532
WORKDIR /home/nonroot
# 8080: WHEP, player, /healthz, /readyz, /metrics of `serve` and `agent`; 8081: the operator's
# /healthz, /readyz, /metrics; 8189/udp: the default media port.
EXPOSE 8080/tcp 8081/tcp 8189/udp
LABEL org.opencontainers.image.title="webrtc-egress" \
      org.opencontainers.image.description="Kubernetes operator serving live video over WebRTC (WHEP)"
ENTRYPOINT ["/usr/local/bin/webrtc-egress"]
CMD ["--help"]
