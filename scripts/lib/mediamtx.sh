# shellcheck shell=bash
# Sourced by scripts/bench-peer: MediaMTX, the peer server the benchmark compares against, built
# once from the Go module proxy and cached. Nothing here goes into the image.

MEDIAMTX_VERSION=v1.20.1   # v1.15.0 and v1.17.0 are refused by the proxy; this one is served
WEBRTC_EGRESS_CACHE=${WEBRTC_EGRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webrtc-egress}

# Prints the path of the MediaMTX binary, building it first when it is not cached.
mediamtx_binary() {
  local dir=$WEBRTC_EGRESS_CACHE/mediamtx-$MEDIAMTX_VERSION
  local bin=$dir/mediamtx
  if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  command -v go >/dev/null || { echo "mediamtx: go is needed to build MediaMTX" >&2; return 1; }
  mkdir -p "$dir"
  echo "== building MediaMTX $MEDIAMTX_VERSION from the Go module proxy into $dir (a few minutes)" >&2
  local src tmp
  src=$(GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go mod download -json \
    "github.com/bluenviron/mediamtx@$MEDIAMTX_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { echo "mediamtx: go mod download gave no source dir" >&2; return 1; }
  # The module cache is read-only; build from a writable copy that gets the two files the
  # release process generates and git ignores (the version string, the HLS player's script).
  tmp=$(mktemp -d "$dir/.src.XXXX")
  cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
  echo "$MEDIAMTX_VERSION" > "$tmp/internal/core/VERSION"
  echo "/* hls.js is not needed by the benchmark */" > "$tmp/internal/servers/hls/hls.min.js"
  (cd "$tmp" && GOTOOLCHAIN=${GOTOOLCHAIN:-auto} GOFLAGS="${GOFLAGS:--p=2}" CGO_ENABLED=0 \
    go build -trimpath -ldflags="-s -w" -o "$dir/mediamtx.tmp" .) || { rm -rf "$tmp"; return 1; }
  rm -rf "$tmp"
  mv "$dir/mediamtx.tmp" "$bin"
  echo "$bin"
}
