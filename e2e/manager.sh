#!/usr/bin/env bash
# Runs berth-manager on this host against the local cluster, as the
# berth-system/berth-manager service account with its own RBAC
# (config/rbac), never as cluster admin. Its admission webhooks listen on a
# free port of 127.0.0.1; the apiserver calls them there (url mode), and
# `down` removes their configurations, as nothing serves them any more.
#
# Replicas elect a leader on the Lease berth-system/berth-manager (short
# timings here, so a failover takes seconds); only the leader runs the
# controllers and points the webhook configurations at its own server.
# `up 2` starts a second replica (the failover suite's standby): it is up
# once it serves and another replica holds the Lease. `down N` stops
# replica N; the configurations are removed only when no replica is left.
#   manager.sh up [N] | down [N]      (N: replica number, default 1)
#
# BERTH_INSTALLED=1: berth was installed by Helm (`--set local=true`) or
# Kustomize (config/local): the CRDs, RBAC, Lease and webhook configurations
# are the installer's, so `up` applies none of them and `down` leaves the
# configurations to the installer's uninstall.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
BIN="${BERTH_MANAGER:-$ROOT/target/debug/berth-manager}"
REPLICA="${2:-1}"
[[ "$REPLICA" =~ ^[1-9]$ ]] || { echo "usage: manager.sh up|down [1-9]" >&2; exit 2; }
NAME="berth-manager$([[ $REPLICA == 1 ]] || echo "-$REPLICA")"
PID="$STATE/pids/$NAME.pid" LOG="$STATE/logs/$NAME.log"
export BERTH_LEASE_DURATION="${BERTH_LEASE_DURATION:-6}" BERTH_LEASE_GRACE="${BERTH_LEASE_GRACE:-2}"
# Accepted resizes nobody applies expire soon on the local cluster (the resize suite waits for it).
export BERTH_RESIZE_ACCEPT_DEADLINE="${BERTH_RESIZE_ACCEPT_DEADLINE:-15}"
kubectl() { "${BERTH_K8S:?}" kubectl --kubeconfig "$STATE/kubeconfig" "$@"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Running, and not a zombie (an exited manager is reaped by init, at its pace).
running() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [[ ${s:0:1} != Z ]]; }
alive() { [[ -f "$PID" ]] && running "$(cat "$PID")"; }

# A replica is up once its webhooks answer and either it leads (the apiserver
# is pointed at its webhooks) or another replica holds the Lease (standby).
webhooks_ready() {
  curl -sfk "https://127.0.0.1:$1/healthz" >/dev/null || return 1
  kubectl get validatingwebhookconfiguration berth-validating \
    -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null | grep -q ":$1/" && return 0
  local holder
  holder=$(kubectl -n berth-system get lease berth-manager -o jsonpath='{.spec.holderIdentity}' 2>/dev/null) || return 1
  [[ -n "$holder" && "$holder" != "$(cat /proc/sys/kernel/hostname)_$2" ]]
}

# Another replica still running (then the webhook configurations stay).
others_alive() {
  local f
  for f in "$STATE"/pids/berth-manager*.pid; do
    [[ -f "$f" && "$f" != "$PID" ]] && running "$(cat "$f")" && return 0
  done
  return 1
}

case "${1:-}" in
  up)
    [[ -x "$BIN" ]] || { echo "[manager] $BIN missing: cargo build -p berth-manager" >&2; exit 1; }
    if alive; then exit 0; fi
    if [[ "${BERTH_INSTALLED:-}" != 1 ]]; then
      kubectl apply --server-side --force-conflicts -f "$ROOT/crds/" >/dev/null
      kubectl apply --server-side -f "$ROOT/config/rbac/manager.yaml" -f "$ROOT/config/rbac/node-agent.yaml" >/dev/null
    fi
    "$ROOT/e2e/cluster/cluster.sh" kubeconfig berth-system berth-manager "$STATE/manager.kubeconfig"
    port=$(free_port)
    mkdir -p "$STATE/pids" "$STATE/logs"
    KUBECONFIG="$STATE/manager.kubeconfig" setsid "$BIN" --webhook-url-host 127.0.0.1 --webhook-bind 127.0.0.1 \
      --webhook-port "$port" >>"$LOG" 2>&1 < /dev/null &
    echo $! >"$PID"
    for _ in $(seq 100); do
      alive || break
      if webhooks_ready "$port" "$(cat "$PID")"; then
        echo "[manager] $NAME running as system:serviceaccount:berth-system:berth-manager; webhooks on https://127.0.0.1:$port (log: $LOG)" >&2
        exit 0
      fi
      sleep 0.2
    done
    tail -20 "$LOG" >&2
    if alive; then
      echo "[manager] webhooks not ready after 20s; see $LOG" >&2
      kill -TERM "$(cat "$PID")" 2>/dev/null || true
    else
      echo "[manager] exited; see $LOG" >&2
    fi
    rm -f "$PID"
    exit 1
    ;;
  down)
    if [[ -f "$PID" ]]; then kill -TERM "$(cat "$PID")" 2>/dev/null || true; rm -f "$PID"; fi
    # Left behind, they would refuse every InplaceSet write (failurePolicy Fail).
    if [[ -f "$STATE/kubeconfig" && "${BERTH_INSTALLED:-}" != 1 ]] && ! others_alive; then
      kubectl delete validatingwebhookconfiguration berth-validating --ignore-not-found --request-timeout 5s \
        >/dev/null 2>&1 || true
      kubectl delete mutatingwebhookconfiguration berth-mutating --ignore-not-found --request-timeout 5s \
        >/dev/null 2>&1 || true
    fi
    ;;
  *) echo "usage: manager.sh up|down [N]" >&2; exit 2 ;;
esac
