#!/usr/bin/env bash
# Runs berth-manager on this host against the local cluster, as the
# berth-system/berth-manager service account with its own RBAC
# (config/rbac), never as cluster admin. Its admission webhooks listen on a
# free port of 127.0.0.1; the apiserver calls them there (url mode), and
# `down` removes their configurations, as nothing serves them any more.
#   manager.sh up | down
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
BIN="${BERTH_MANAGER:-$ROOT/target/debug/berth-manager}"
PID="$STATE/pids/berth-manager.pid" LOG="$STATE/logs/berth-manager.log"
kubectl() { "${BERTH_K8S:?}" kubectl --kubeconfig "$STATE/kubeconfig" "$@"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { [[ -f "$PID" ]] && kill -0 "$(cat "$PID")" 2>/dev/null; }

# The manager is up once its webhooks answer and the apiserver is pointed at them.
webhooks_ready() {
  curl -sfk "https://127.0.0.1:$1/healthz" >/dev/null &&
    kubectl get validatingwebhookconfiguration berth-validating \
      -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null | grep -q ":$1/"
}

case "${1:-}" in
  up)
    [[ -x "$BIN" ]] || { echo "[manager] $BIN missing: cargo build -p berth-manager" >&2; exit 1; }
    if alive; then exit 0; fi
    kubectl apply --server-side --force-conflicts -f "$ROOT/crds/" >/dev/null
    kubectl apply --server-side -f "$ROOT/config/rbac/manager.yaml" >/dev/null
    "$ROOT/e2e/cluster/cluster.sh" kubeconfig berth-system berth-manager "$STATE/manager.kubeconfig"
    port=$(free_port)
    mkdir -p "$STATE/pids" "$STATE/logs"
    KUBECONFIG="$STATE/manager.kubeconfig" setsid "$BIN" --webhook-url-host 127.0.0.1 --webhook-bind 127.0.0.1 \
      --webhook-port "$port" >"$LOG" 2>&1 < /dev/null &
    echo $! >"$PID"
    for _ in $(seq 100); do
      alive || break
      if webhooks_ready "$port"; then
        echo "[manager] running as system:serviceaccount:berth-system:berth-manager; webhooks on https://127.0.0.1:$port (log: $LOG)" >&2
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
    if [[ -f "$STATE/kubeconfig" ]]; then
      kubectl delete validatingwebhookconfiguration berth-validating --ignore-not-found --request-timeout 5s \
        >/dev/null 2>&1 || true
      kubectl delete mutatingwebhookconfiguration berth-mutating --ignore-not-found --request-timeout 5s \
        >/dev/null 2>&1 || true
    fi
    ;;
  *) echo "usage: manager.sh up|down" >&2; exit 2 ;;
esac
