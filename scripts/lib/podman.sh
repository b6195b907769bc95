# shellcheck shell=bash
# Sourced by scripts/image and scripts/test-image: podman from Debian's packages, set up to run
# containers on this host. Nothing here goes into the image.

WEBRTC_EGRESS_CACHE=${WEBRTC_EGRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webrtc-egress}

# Installs podman (with runc) and mmdebstrap from Debian when missing.
podman_install() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || {
    echo "podman_install: ${need[*]} missing and this is not a Debian-like system" >&2
    return 1
  }
  echo "== installing ${need[*]} (Debian packages)" >&2
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

# A host without CAP_SYS_RESOURCE (a container or sandbox) cannot raise the rlimits podman
# gives containers by default (nofile 1048576): runc then fails with "error setting rlimits".
# There, unless the caller chose a CONTAINERS_CONF, containers get limits this host can grant.
podman_host_config() {
  [ -n "${CONTAINERS_CONF:-}" ] && return 0
  local capeff
  capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  (( (16#$capeff >> 24) & 1 )) && return 0   # bit 24: CAP_SYS_RESOURCE
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ] && nofile=16384
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 16384 ] && nproc=16384
  # Plain `runc` and cgroupfs: crun and the systemd cgroup manager refuse hybrid cgroup v1
  # hosts without systemd, as such sandboxes usually are.
  local conf=$WEBRTC_EGRESS_CACHE/containers.conf
  mkdir -p "$WEBRTC_EGRESS_CACHE"
  cat > "$conf.tmp" <<EOF
# Written by scripts/lib/podman.sh: this host lacks CAP_SYS_RESOURCE.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
  mv "$conf.tmp" "$conf"
  export CONTAINERS_CONF=$conf
  echo "   no CAP_SYS_RESOURCE here: CONTAINERS_CONF=$conf" >&2
}
