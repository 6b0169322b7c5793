#!/usr/bin/env bash
# `make demo`, once the cluster and berth-manager are up: apply the example
# InplaceSet, roll a new image through it in place, and show that no pod moved.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
export KUBECONFIG="$STATE/kubeconfig"
kubectl() { "$STATE/bin/kubectl" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
COLUMNS_POD='NAME:.metadata.name,REVISION:.metadata.labels.controller-revision-hash,NODE:.spec.nodeName,IMAGE:.spec.containers[0].image,RESTARTS:.status.containerStatuses[0].restartCount,READY:.status.conditions[?(@.type=="Ready")].status,UID:.metadata.uid'

step "Nodes: simulated (kubemark hollow kubelets), running the real kubelet code"
kubectl get nodes
step "berth: CRDs, and berth-manager running as system:serviceaccount:berth-system:berth-manager"
kubectl get crds -o custom-columns=NAME:.metadata.name,SHORT:.spec.names.shortNames,SCOPE:.spec.scope
step "kubectl explain inplaceset.spec.updateStrategy.partition"
kubectl explain inplaceset.spec.updateStrategy.partition | sed -n '/DESCRIPTION/,$p'

step "Applying examples/inplaceset-web.yaml (4 pods, partition 1, maxUnavailable 50%)"
kubectl delete inplaceset web --ignore-not-found --wait=true >/dev/null
kubectl apply -f "$ROOT/examples/inplaceset-web.yaml"
kubectl wait inplaceset/web --for=jsonpath='{.status.updatedReadyReplicas}'=4 --timeout=120s >/dev/null
kubectl get inplaceset web
kubectl get pods -l app.kubernetes.io/name=web -o custom-columns="$COLUMNS_POD" | tee "$STATE/demo-before.txt"

step "Rolling example/web:1.1 in place"
kubectl patch inplaceset web --type json \
  -p '[{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "example/web:1.1"}]'
generation=$(kubectl get inplaceset web -o jsonpath='{.metadata.generation}')
for _ in $(seq 1 120); do
  line=$(kubectl get inplaceset web -o jsonpath='{.status.observedGeneration} {.status.updatedReplicas} {.status.updatedReadyReplicas} {.status.readyReplicas}')
  read -r observed updated updated_ready ready <<<"$line"
  printf '  %s  updated %s/3 (ready %s), ready pods %s/4\n' "$(date +%T.%3N)" "${updated:-0}" "${updated_ready:-0}" "${ready:-0}"
  [[ "$observed" == "$generation" && "${updated_ready:-0}" == 3 && "${ready:-0}" == 4 ]] && break
  sleep 0.5
done
kubectl get pods -l app.kubernetes.io/name=web -o custom-columns="$COLUMNS_POD" | tee "$STATE/demo-after.txt"

step "Did any pod move?"
moved=0
while read -r name _ node _ _ _ uid; do
  [[ "$name" == NAME ]] && continue
  if ! grep -q " $node .* $uid\$" "$STATE/demo-after.txt"; then echo "  $name moved or was recreated"; moved=$((moved + 1)); fi
done <"$STATE/demo-before.txt"
echo "  $((4 - moved)) of 4 pods kept their UID and node; web-0 stays on the old image (partition 1)."
step "Events"
kubectl get events --field-selector involvedObject.kind=InplaceSet,involvedObject.name=web --sort-by=.lastTimestamp \
  -o custom-columns=REASON:.reason,MESSAGE:.message | tail -8

cat <<MSG

The cluster stays up. To explore:
  export KUBECONFIG=$KUBECONFIG PATH=$STATE/bin:\$PATH
  kubectl get ips web -o wide          # InplaceSets (short name ips)
  kubectl patch ips web --type merge -p '{"spec":{"updateStrategy":{"partition":0}}}'   # finish the rollout
  tail -f $STATE/logs/berth-manager.log
  make demo-down                       # stop everything
MSG
