#!/usr/bin/env bash
# `make demo`, after the cluster is up: install berth's CRDs, apply the
# example, and show what is there and how to explore it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
export KUBECONFIG="$STATE/kubeconfig"
kubectl() { "$STATE/bin/kubectl" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Nodes (simulated: kubemark hollow kubelets)"
kubectl get nodes -o wide
step "Installing berth's CRDs (kubectl apply --server-side -f crds/)"
kubectl apply --server-side -f "$ROOT/crds/"
kubectl wait --for condition=Established --timeout 60s crd/inplacesets.apps.berth.dev crd/sidecarsets.apps.berth.dev
kubectl get crds -o custom-columns=NAME:.metadata.name,SHORT:.spec.names.shortNames,SCOPE:.spec.scope
step "kubectl explain inplaceset.spec.updateStrategy"
kubectl explain inplaceset.spec.updateStrategy
step "Applying examples/inplaceset-web.yaml"
kubectl apply -f "$ROOT/examples/inplaceset-web.yaml"
kubectl get inplacesets -o wide
cat <<MSG

The cluster stays up. The InplaceSet controller is not part of this build yet,
so the example is stored and validated but creates no pods.

  export KUBECONFIG=$KUBECONFIG
  export PATH=$STATE/bin:\$PATH      # kubectl, built from the Kubernetes modules
  kubectl get ips                    # InplaceSets (short name)
  kubectl run demo --image=any/image:1 && kubectl get pod demo -o wide
  make demo-down                     # stop everything
MSG
