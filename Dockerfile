# syntax=docker/dockerfile:1
#
# The webrtc-egress image: one binary for every role (`operator`, `agent`, `serve`), plus the
# FFmpeg it drives. The Helm chart's default image is built from this file:
#
#   docker build -t ghcr.io/dragonfork/webrtc-egress:0.1.0 .
#
# (the tag is the chart's appVersion, which follows Cargo.toml's version).
#
# `scripts/image` builds the same `runtime` stage with podman, without Docker Hub: it passes
# RUNTIME_BASE (a Debian image it makes from Debian's packages with mmdebstrap) and
# BINARY_FROM (an image holding a binary built on the host at /out/webrtc-egress), so the
# `build` stage is skipped. Both paths end in the same runtime stage below, with a stripped
# release binary.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm
# Base of the runtime stage: any Debian image of DEBIAN_RELEASE.
ARG RUNTIME_BASE=debian:${DEBIAN_RELEASE}-slim
# Where the binary comes from: the `build` stage, or an image with /out/webrtc-egress.
ARG BINARY_FROM=build

# --- build ------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between builds; the
# binary is copied out of the cached target directory, which is not part of the layer, and
# stripped of its symbol table (27 -> 21 MB; panic messages keep their file and line).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin webrtc-egress \
 && install -D -s -m 0755 target/release/webrtc-egress /out/webrtc-egress

FROM ${BINARY_FROM} AS binary

# --- runtime ----------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
# ffmpeg: Debian's build carries libx264 and libopus, the encoders the egress uses.
# ca-certificates: TLS to the API server's and inputs' (HLS over HTTPS, RTMPS) CAs.
# Trimmed: no recommends; no documentation, man pages or translations (copyright files stay);
# no keyboard maps (SDL's, for a window nobody opens); no apt lists or caches. Mesa's DRI
# drivers with the LLVM and Z3 they link (about 160 MB) come in only through libavdevice's
# SDL/OpenGL output devices; ffmpeg links none of them and a headless server never opens a GL
# context, so they are purged (dpkg then reports libglx-mesa0's dependency as unmet; nothing
# here runs apt afterwards). The last lines prove ffmpeg still starts and encodes H.264 + Opus.
RUN printf '%s\n' \
        'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
        'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/lintian/*' \
        'path-exclude=/usr/share/X11/xkb/*' \
        > /etc/dpkg/dpkg.cfg.d/webrtc-egress-slim \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates ffmpeg \
 && dpkg --purge --force-depends $(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' \
        libgl1-mesa-dri 'libllvm*' 'libz3-*' | awk '$1 == "ii" {print $2}') \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt \
        /var/log/dpkg.log /var/log/alternatives.log \
 && ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc2=size=320x240:rate=30 \
        -f lavfi -i sine=sample_rate=48000 -t 1 -c:v libx264 -c:a libopus -f null - \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
        --shell /usr/sbin/nologin nonroot
COPY --from=binary /out/webrtc-egress /usr/local/bin/webrtc-egress
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
