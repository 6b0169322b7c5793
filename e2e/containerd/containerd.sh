#!/usr/bin/env bash
# A real containerd (Debian's containerd 1.6 + runc) for the node agent's CRI
# tests, run as a host process with its own socket and state under
# target/containerd, next to (never instead of) any containerd already running.
#
#   containerd.sh up     write the config, start containerd, import the two images
#   containerd.sh down   stop containerd and every shim it started, remove its state
#   containerd.sh env    print `export` lines for the tests (socket, images, cgroup version)
#   containerd.sh status what is running
#
# Installs nothing: `make deps` apt-installs containerd, runc and busybox-static.
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
PAUSE_IMAGE="berth.local/pause:1"
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
  # Sandboxes use host networking, so no CNI plugin is needed; the CNI dirs
  # are empty ones of our own so the host's (if any) are not read.
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
      bin_dir = "$STATE/cni/bin"
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
  "$HERE/image.sh" "$STATE/images/pause.tar" "$PAUSE_IMAGE" pause
  ctr_ images import "$STATE/images/busybox.tar" >/dev/null
  ctr_ images import "$STATE/images/pause.tar" >/dev/null
  local images; images="$(ctr_ images ls -q)"
  grep -qx "$APP_IMAGE" <<<"$images" || die "image $APP_IMAGE missing after import"
  grep -qx "$PAUSE_IMAGE" <<<"$images" || die "image $PAUSE_IMAGE missing after import"
  log "up: socket $SOCK, images $APP_IMAGE $PAUSE_IMAGE, log $LOG"
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
  rm -rf "$STATE/root" "$STATE/state" "$STATE/opt" "$PIDFILE" "$SOCK" "$SOCK.ttrpc"
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
