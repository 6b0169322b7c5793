#!/usr/bin/env bash
# A real containerd (Debian's containerd 1.6 + runc) for the node agent's CRI
# tests, run as a host process with its own socket and state under
# target/containerd, next to (never instead of) any containerd already running.
#
#   containerd.sh up     write the config, start containerd, import the images
#                        (app :1 and :2, which differ in content, and the pause image)
#   containerd.sh down   stop containerd and every shim it started, remove its state
#   containerd.sh env    print `export` lines for the tests (socket, images, cgroup version)
#   containerd.sh status what is running
#
# CONTAINERD_CNI_SUBNET (e.g. 10.89.0.0/16): give sandboxes a network of their
# own through Debian's CNI plugins (bridge, host-local, loopback in /usr/lib/cni),
# as a kubelet node needs; unset, sandboxes must use host networking.
#
# Installs nothing: `make deps` apt-installs containerd, runc, busybox-static and
# containernetworking-plugins.
# No registry: the images are OCI tarballs built here from /bin/busybox
# (busybox-static), see image.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/e2e/containerd"
STATE="${CONTAINERD_STATE:-$ROOT/target/containerd}"
SOCK="$STATE/containerd.sock"
PIDFILE="$STATE/containerd.pid"
LOG="$STATE/containerd.log"
NS=k8s.io
APP_IMAGE="berth.local/busybox:1"
APP_IMAGE_2="berth.local/busybox:2"
PAUSE_IMAGE="berth.local/pause:1"
# The bridge of CONTAINERD_CNI_SUBNET (deleted by `down`).
CNI_BRIDGE="${CONTAINERD_CNI_BRIDGE:-berth-cni0}"
# Tests put their pods' cgroups under this parent (cgroupfs driver).
CGROUP_PARENT="berth-cri-test"

log() { printf '[containerd] %s\n' "$*" >&2; }
die() { printf '[containerd] ERROR: %s\n' "$*" >&2; exit 1; }

alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# v1 (or hybrid: v1 controllers plus an empty cgroup2 at unified/) or v2.
cgroup_version() {
  if [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]]; then echo v2; else echo v1; fi
}

ctr_() { ctr --address "$SOCK" -n "$NS" "$@"; }

write_config() {
  mkdir -p "$STATE/root" "$STATE/state" "$STATE/opt" "$STATE/cni/bin" "$STATE/cni/net.d"
  # Without CONTAINERD_CNI_SUBNET sandboxes use host networking and the CNI
  # dirs are empty ones of our own, so the host's (if any) are not read.
  local cni_bin="$STATE/cni/bin"
  if [[ -n "${CONTAINERD_CNI_SUBNET:-}" ]]; then
    cni_bin=/usr/lib/cni
    [[ -x $cni_bin/bridge && -x $cni_bin/host-local && -x $cni_bin/loopback ]] ||
      die "CNI plugins missing in $cni_bin: run \`make deps\` (Debian package containernetworking-plugins)"
    # No gateway and no masquerade: the host's forwarding and iptables stay as they are.
    cat >"$STATE/cni/net.d/10-berth.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "berth-real-node", "plugins": [
  {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": false, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$CONTAINERD_CNI_SUBNET"}]], "dataDir": "$STATE/cni/ipam"}},
  {"type": "loopback"}]}
JSON
  fi
  cat >"$STATE/config.toml" <<TOML
version = 2
root = "$STATE/root"
state = "$STATE/state"
oom_score = 0

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$STATE/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    # Needed here (DESIGN.md §6): this machine's kernel has no AppArmor, and
    # containerd may not lower the OOM score it runs with.
    disable_apparmor = true
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$cni_bin"
      conf_dir = "$STATE/cni/net.d"
TOML
}

cmd_up() {
  command -v containerd >/dev/null && command -v runc >/dev/null && command -v ctr >/dev/null ||
    die "containerd, runc and ctr are needed: run \`make deps\` (Debian packages containerd runc busybox-static)"
  [[ -x /bin/busybox ]] || die "/bin/busybox is needed: run \`make deps\` (Debian package busybox-static)"
  if alive; then
    log "already running (pid $(cat "$PIDFILE")), socket $SOCK"
  else
    [[ $(id -u) == 0 ]] || die "containerd needs root"
    mkdir -p "$STATE"
    write_config
    log "cgroup $(cgroup_version); starting $(containerd --version | awk '{print $3}') with $STATE/config.toml"
    # setsid: its own process group, so `down` can stop it and its shims' parents.
    setsid containerd --config "$STATE/config.toml" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + 30))
    until ctr --address "$SOCK" version >/dev/null 2>&1; do
      if ! alive; then tail -n 30 "$LOG" >&2; die "containerd exited during start-up; see $LOG"; fi
      if (( SECONDS > deadline )); then tail -n 30 "$LOG" >&2; cmd_down; die "containerd not ready after 30s; see $LOG"; fi
      sleep 0.2
    done
    # The CRI plugin loads after the socket answers; an error there (config,
    # snapshotter) shows up as a missing plugin.
    if ! ctr --address "$SOCK" plugins ls 2>/dev/null | grep -E 'io.containerd.grpc.v1 +cri +.* ok' >/dev/null; then
      ctr --address "$SOCK" plugins ls >&2 || true; tail -n 30 "$LOG" >&2; cmd_down
      die "the CRI plugin did not load; see $LOG"
    fi
  fi
  "$HERE/image.sh" "$STATE/images/busybox.tar" "$APP_IMAGE" app
  "$HERE/image.sh" "$STATE/images/busybox-2.tar" "$APP_IMAGE_2" app 2
  "$HERE/image.sh" "$STATE/images/pause.tar" "$PAUSE_IMAGE" pause
  local tar image images
  for tar in busybox busybox-2 pause; do ctr_ images import "$STATE/images/$tar.tar" >/dev/null; done
  images="$(ctr_ images ls -q)"
  for image in "$APP_IMAGE" "$APP_IMAGE_2" "$PAUSE_IMAGE"; do
    grep -qx "$image" <<<"$images" || die "image $image missing after import"
  done
  log "up: socket $SOCK, images $APP_IMAGE $APP_IMAGE_2 $PAUSE_IMAGE, log $LOG"
}

# Every process whose command line names our socket or state: containerd
# itself and the runc shims it started (the shims outlive containerd).
our_pids() {
  local pid
  for pid in $(pgrep -f "containerd" || true); do
    [[ $pid == "$$" ]] && continue
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -e "$SOCK" -e "$STATE/config.toml"; then echo "$pid"; fi
  done
}

cmd_down() {
  if alive; then
    # Kill and delete every task (sandboxes too) so runc removes their cgroups
    # and the shims exit; killing a shim instead would orphan its container.
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null || true); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 0.3
    for c in $(ctr_ tasks ls -q 2>/dev/null || true); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while alive && (( SECONDS < deadline )); do sleep 0.2; done
    alive && kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true
  fi
  # Shims left behind (containerd killed hard): they name our socket.
  local pids; pids="$(our_pids)"
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  fi
  [[ -z "$(our_pids)" ]] || die "processes left: $(our_pids)"
  # Overlay mounts of containers and sandbox shm under our state.
  local m
  for m in $(awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$STATE/root" "$STATE/state" "$STATE/opt" "$STATE/cni" "$PIDFILE" "$SOCK" "$SOCK.ttrpc"
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then ip link delete "$CNI_BRIDGE" 2>/dev/null || true; fi
  # Pod cgroups the tests made (their sandboxes' cgroup_parent), empty once
  # runc removed the containers'; deepest first.
  local d
  for d in $(find /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT" -depth -type d 2>/dev/null); do rmdir "$d" 2>/dev/null || true; done
  log "down"
}

cmd_env() {
  cat <<ENV
export BERTH_CRI_SOCKET=$SOCK
export BERTH_CRI_APP_IMAGE=$APP_IMAGE
export BERTH_CRI_APP_IMAGE_2=$APP_IMAGE_2
export BERTH_CRI_PAUSE_IMAGE=$PAUSE_IMAGE
export BERTH_CGROUP_VERSION=$(cgroup_version)
export BERTH_CRI_CGROUP_PARENT=/$CGROUP_PARENT
ENV
}

cmd_status() {
  if alive; then echo "containerd running (pid $(cat "$PIDFILE")), socket $SOCK"; ctr_ tasks ls 2>/dev/null || true
  else echo "containerd not running"; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
