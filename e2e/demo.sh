#!/usr/bin/env bash
# `make demo`, once the cluster, berth-manager and the node agents are up:
# apply the example InplaceSet, roll a new image through it in place batch by
# batch (approving the canary), then a CPU change as in-place resizes through
# the node agents, then an over-committing resize the manager rejects; show
# that no pod moved.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
export KUBECONFIG="$STATE/kubeconfig"
# `kubectl berth`: the plugin (kubectl-berth, built by `make build`) found on PATH.
export PATH="${CARGO_TARGET_DIR:-$ROOT/target}/debug:$PATH"
kubectl() { "$STATE/bin/kubectl" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
COLUMNS_POD='NAME:.metadata.name,REVISION:.metadata.labels.controller-revision-hash,NODE:.spec.nodeName,IMAGE:.spec.containers[0].image,CPU-REQ:.spec.containers[0].resources.requests.cpu,CPU-LIM:.spec.containers[0].resources.limits.cpu,RESIZE:.metadata.annotations.berth\.dev/resize-state,RESTARTS:.status.containerStatuses[0].restartCount,READY:.status.conditions[?(@.type=="Ready")].status,UID:.metadata.uid'
pods() { kubectl get pods -l app.kubernetes.io/name=web --sort-by=.metadata.name -o custom-columns="$COLUMNS_POD"; }
REPLICAS=6

# Follows the rollout to the set's current generation, one line per change:
# batch, its state, pods updated and ready. A batch waiting for manual
# approval is approved with `kubectl berth rollout resume web`.
follow() {
  local last="" line
  for _ in $(seq 1 600); do
    line=$(kubectl get inplaceset web -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.rollout.currentBatch} {.status.rollout.state} {.status.updatedReplicas} {.status.updatedReadyReplicas} {.status.readyReplicas} {.spec.rolloutPlan.approvedBatches}')
    read -r generation observed batch state updated updated_ready ready approved <<<"$line"
    if [[ "$observed" == "$generation" ]]; then
      local now="batch $((${batch:-0} + 1))/3 ${state:-?}: updated ${updated:-0}/$REPLICAS (ready ${updated_ready:-0}), ready pods ${ready:-0}/$REPLICAS"
      [[ "$now" != "$last" ]] && printf '  %s  %s\n' "$(date +%T.%3N)" "$now" && last="$now"
      if [[ "$state" == Paused ]] && (( ${approved:-0} <= ${batch:-0} )) \
        && [[ "$(kubectl get inplaceset web -o jsonpath="{.spec.rolloutPlan.batches[${batch:-0}].pause.manual}")" == true ]]; then
        printf '  %s  canary looks good: kubectl berth rollout resume web\n' "$(date +%T.%3N)"
        kubectl berth rollout resume web | sed 's/^/    /' 
      fi
      [[ "$state" == Succeeded && "${updated_ready:-0}" == "$REPLICAS" && "${ready:-0}" == "$REPLICAS" ]] && return 0
      [[ "$state" == Failed || "$state" == RolledBack ]] && { echo "  rollout $state"; return 1; }
    fi
    sleep 0.5
  done
  echo "  rollout did not finish in 5 minutes"; return 1
}

step "Nodes: simulated (kubemark hollow kubelets), running the real kubelet code"
kubectl get nodes
step "berth: CRDs; berth-manager as system:serviceaccount:berth-system:berth-manager; one node agent per node"
kubectl get crds -o custom-columns=NAME:.metadata.name,SHORT:.spec.names.shortNames,SCOPE:.spec.scope
step "kubectl explain inplaceset.spec.rolloutPlan.batches"
kubectl explain inplaceset.spec.rolloutPlan.batches | sed -n '/DESCRIPTION/,$p'

step "Applying examples/inplaceset-web.yaml ($REPLICAS pods; batches: 1 canary awaiting approval, 50%, 100%)"
kubectl delete inplaceset web --ignore-not-found --wait=true >/dev/null
kubectl apply -f "$ROOT/examples/inplaceset-web.yaml"
kubectl wait inplaceset/web --for=jsonpath='{.status.updatedReadyReplicas}'=$REPLICAS --timeout=120s >/dev/null
kubectl get inplaceset web
pods | tee "$STATE/demo-before.txt"

step "kubectl berth plan: what rolling example/web:1.1 would do (a dry run)"
kubectl berth plan inplaceset web --image app=example/web:1.1

step "Rolling example/web:1.1 in place, batch by batch"
kubectl patch inplaceset web --type json \
  -p '[{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "example/web:1.1"}]'
follow
pods

step "Resizing the app in place: cpu request 100m -> 250m, limit 500m -> 1 (each pod: a resize request, Accepted by the manager, applied by its node's agent through pods/resize)"
kubectl patch inplaceset web --type json -p '[
  {"op": "replace", "path": "/spec/template/spec/containers/0/resources/requests/cpu", "value": "250m"},
  {"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/cpu", "value": "1"}]'
follow
pods | tee "$STATE/demo-after.txt"

step "Did any pod move?"
moved=0
while read -r name _ node _ _ _ _ _ _ uid; do
  [[ "$name" == NAME ]] && continue
  if ! grep -q "^$name .* $node .* $uid\$" "$STATE/demo-after.txt"; then echo "  $name moved or was recreated"; moved=$((moved + 1)); fi
done <"$STATE/demo-before.txt"
echo "  $((REPLICAS - moved)) of $REPLICAS pods kept their UID and node through an image rollout and a resize; restarts are the image change only."

step "A resize the node cannot hold: 64 CPUs for web-0 (the manager rejects it with the numbers; the pod is untouched)"
# kubectl berth resize writes the request and follows it; exit 1 means Rejected or Failed.
if kubectl berth resize web-0 --container app --cpu 64 --limits-cpu 128; then
  echo "  unexpected: a 64-CPU resize was applied"; exit 1
fi

step "kubectl berth rollout history web; kubectl berth describe pod web-0 (its rejected resize included)"
kubectl berth rollout history web
kubectl berth describe pod web-0

step "Events"
kubectl get events --field-selector involvedObject.kind=InplaceSet,involvedObject.name=web --sort-by=.lastTimestamp \
  -o custom-columns=REASON:.reason,MESSAGE:.message | tail -12

cat <<MSG

The cluster stays up. To explore:
  export KUBECONFIG=$KUBECONFIG PATH=$STATE/bin:\$PATH
  kubectl get ips web -o wide          # InplaceSets (short name ips)
  kubectl get pods -l app.kubernetes.io/name=web -o custom-columns='$COLUMNS_POD'
  export PATH=$ROOT/target/debug:\$PATH  # kubectl berth (the plugin)
  kubectl berth resize web-1 --container app --cpu 300m --limits-cpu 1   # resize one pod, following its states
  kubectl berth rollout status web     # or: rollout pause|resume|undo|history, describe, plan
  tail -f $STATE/logs/berth-manager.log $STATE/logs/node-agent-*.log
  make demo-down                       # stop everything
MSG
