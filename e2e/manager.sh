#!/usr/bin/env bash
# Runs berth-manager on this host against the local cluster, as the
# berth-system/berth-manager service account with its own RBAC
# (config/rbac), never as cluster admin.
#   manager.sh up | down
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
BIN="${BERTH_MANAGER:-$ROOT/target/debug/berth-manager}"
PID="$STATE/pids/berth-manager.pid" LOG="$STATE/logs/berth-manager.log"
kubectl() { "${BERTH_K8S:?}" kubectl --kubeconfig "$STATE/kubeconfig" "$@"; }

case "${1:-}" in
  up)
    [[ -x "$BIN" ]] || { echo "[manager] $BIN missing: cargo build -p berth-manager" >&2; exit 1; }
    if [[ -f "$PID" ]] && kill -0 "$(cat "$PID")" 2>/dev/null; then exit 0; fi
    kubectl apply --server-side --force-conflicts -f "$ROOT/crds/" >/dev/null
    kubectl apply --server-side -f "$ROOT/config/rbac/manager.yaml" >/dev/null
    "$ROOT/e2e/cluster/cluster.sh" kubeconfig berth-system berth-manager "$STATE/manager.kubeconfig"
    KUBECONFIG="$STATE/manager.kubeconfig" setsid "$BIN" >"$LOG" 2>&1 < /dev/null &
    echo $! >"$PID"
    sleep 1
    kill -0 "$(cat "$PID")" 2>/dev/null || { tail -20 "$LOG" >&2; echo "[manager] exited; see $LOG" >&2; exit 1; }
    echo "[manager] running as system:serviceaccount:berth-system:berth-manager (log: $LOG)" >&2
    ;;
  down)
    if [[ -f "$PID" ]]; then kill -TERM "$(cat "$PID")" 2>/dev/null || true; rm -f "$PID"; fi
    ;;
  *) echo "usage: manager.sh up|down" >&2; exit 2 ;;
esac
