#!/usr/bin/env bash
# Runs berth-node-agent on this host for every node of the local cluster, as
# the DaemonSet does in a real one (`make demo`). Each agent acts as
# system:serviceaccount:berth-system:berth-node-agent with a token bound to a
# placeholder pod on its node, exactly as a DaemonSet pod's token is: the
# resize webhook reads the node from it. The hollow kubelets have no
# container runtime, so the agents use the kubelet's pods/resize path.
#   node-agents.sh up | down
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
BIN="${BERTH_NODE_AGENT:-$ROOT/target/debug/berth-node-agent}"
NS=berth-system SA=berth-node-agent
kubectl() { "${BERTH_K8S:?}" kubectl --kubeconfig "$STATE/kubeconfig" "$@"; }
running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-}" in
  up)
    [[ -x "$BIN" ]] || { echo "[node-agents] $BIN missing: cargo build -p berth-node-agent" >&2; exit 1; }
    kubectl apply --server-side -f "$ROOT/config/rbac/node-agent.yaml" >/dev/null
    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/node-agents"
    for node in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
      pid="$STATE/pids/node-agent-$node.pid"
      running "$pid" && continue
      placeholder="berth-node-agent-$node"
      kubectl apply --server-side -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $placeholder, namespace: $NS, labels: {app.kubernetes.io/name: berth-node-agent}}
spec:
  nodeName: $node
  serviceAccountName: $SA
  containers: [{name: agent, image: berth.local/node-agent:placeholder}]
YAML
      token=$(kubectl create token "$SA" -n "$NS" --duration 24h --bound-object-kind Pod --bound-object-name "$placeholder")
      config="$STATE/node-agents/$node.kubeconfig"
      cat >"$config" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: berth-local
  cluster: {server: $(cat "$STATE/server"), certificate-authority: $STATE/pki/ca.crt}
contexts:
- name: agent
  context: {cluster: berth-local, user: agent}
current-context: agent
users:
- name: agent
  user: {token: $token}
YAML
      KUBECONFIG="$config" NODE_NAME="$node" BERTH_STATE_DIR="$STATE/node-agents/$node.state" \
        setsid "$BIN" >>"$STATE/logs/node-agent-$node.log" 2>&1 </dev/null &
      echo $! >"$pid"
    done
    echo "[node-agents] one berth-node-agent per node (logs: $STATE/logs/node-agent-*.log)" >&2
    ;;
  down)
    for pid in "$STATE"/pids/node-agent-*.pid; do
      [[ -f "$pid" ]] || continue
      kill -TERM "$(cat "$pid")" 2>/dev/null || true
      rm -f "$pid"
    done
    ;;
  *) echo "usage: node-agents.sh up|down" >&2; exit 2 ;;
esac
