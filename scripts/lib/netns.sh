# shellcheck shell=bash
# Sourced by scripts/test-reachability and scripts/test-adaptive: `serve` running MANIFEST in
# the "pod" namespace of tests/netns/topology, torn down (with its log shown on failure) on exit.

# netns_up MANIFEST: sets `dir`, sources its env (POD_NS, LAPTOP_NS, FORWARD_URL, ...) and
# returns once every process of the manifest is live.
netns_up() {
  local bin=${WEBRTC_EGRESS_BIN:-$PWD/target/debug/webrtc-egress}
  [ -x "$bin" ] || { echo "$0: $bin missing (cargo build)" >&2; exit 1; }
  dir=$(mktemp -d "${TMPDIR:-/tmp}/webrtc-egress-netns.XXXXXX")
  trap netns_down EXIT
  trap 'exit 130' INT TERM
  printf '%s\n' "$1" > "$dir/egress.yaml"
  tests/netns/topology up "$dir" "$bin" "$dir/egress.yaml"
  # shellcheck disable=SC1091
  source "$dir/env"
  local want live i
  want=$(grep -c '^ *- id:' "$dir/egress.yaml")
  echo "== namespaces: pod $POD_NS, laptop $LAPTOP_NS; waiting for $want live process(es)"
  for i in $(seq 120); do
    live=$(ip netns exec "$LAPTOP_NS" curl -sf --max-time 2 "$FORWARD_URL/api/v1/streams" \
      | grep -o '"live":true' | wc -l || true)
    [ "$live" -ge "$want" ] && return 0
    [ "$i" = 120 ] && { echo "streams never went live" >&2; exit 1; }
    sleep 0.5
  done
}

netns_down() {
  local rc=$?
  [ $rc -ne 0 ] && { echo "== serve log"; tail -n 30 "$dir/serve.log" 2>/dev/null || true; }
  # SERVE_LOG_COPY=FILE keeps the whole log (with SERVE_LOG=debug, say) for a closer look.
  [ -n "${SERVE_LOG_COPY:-}" ] && cp "$dir/serve.log" "$SERVE_LOG_COPY" 2>/dev/null
  tests/netns/topology down "$dir"
  exit $rc
}
