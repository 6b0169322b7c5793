#!/usr/bin/env bash
# `make chart-check`: the Helm chart (charts/berth) and the Kustomize overlays
# (config/), checked without a cluster: the copies of crds/ and config/rbac
# are current, helm lint passes, every option renders the objects it should
# (and no others), the values schema refuses unknown or wrong values with a
# message naming them, the Helm-generated webhook certificate verifies against
# its CA for the Service's names, and each overlay builds.
# Needs BERTH_HELM and BERTH_K8S (the Makefile exports both).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
CHART=charts/berth
helm() { "${BERTH_HELM:?}" "$@"; }
kustomize() { "${BERTH_K8S:?}" kubectl kustomize "$@"; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failures=0 checks=0
ok() { checks=$((checks + 1)); }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "chart-check: FAIL: $*" >&2; }

# 1. One source each: crds/ (crdgen) and config/rbac.
for f in crds/*.yaml; do
  cmp -s "$f" "$CHART/crds/$(basename "$f")" && ok || fail "$CHART/crds/$(basename "$f") differs from $f: run make chart-sync"
  cmp -s "$f" "config/crd/$(basename "$f")" && ok || fail "config/crd/$(basename "$f") differs from $f: run make chart-sync"
done
for f in "$CHART"/crds/*.yaml config/crd/*.yaml; do
  [[ $(basename "$f") == kustomization.yaml || -f crds/$(basename "$f") ]] && ok || fail "$f is not in crds/: remove it"
done
for f in manager.yaml node-agent.yaml; do
  cmp -s "config/rbac/$f" "$CHART/files/rbac/$f" && ok || fail "$CHART/files/rbac/$f differs from config/rbac/$f: run make chart-sync"
done

# 2. Lint, defaults and each option.
OPTIONS=(
  "default|"
  "cert-manager|--set webhook.certificates=cert-manager"
  "cert-manager-issuer|--set webhook.certificates=cert-manager --set webhook.certManager.issuerRef.name=corp-ca --set webhook.certManager.issuerRef.kind=ClusterIssuer"
  "self-generated|--set webhook.certificates=self-generated --set manager.replicas=1"
  "local|--set local=true"
  "no-agent|--set nodeAgent.enabled=false --set manager.podDisruptionBudget.enabled=false"
  "image|--set image.repository=example/berth --set image.tag=v9"
  "labels|--set labels.team=platform"
)
kinds() { grep -E '^kind: ' "$1" | sed 's/^kind: //' | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}' | sed 's/ $//'; }
expect_kinds() {
  local name=$1 file=$2 want=$3 got
  got=$(kinds "$file")
  [[ "$got" == "$want" ]] && ok || fail "$name renders [$got], expected [$want]"
}
COMMON="ClusterRole=2 ClusterRoleBinding=2"
for option in "${OPTIONS[@]}"; do
  name=${option%%|*} args=${option#*|}
  # shellcheck disable=SC2086
  if ! helm lint --strict "$CHART" $args >"$WORK/lint.log" 2>&1; then fail "helm lint ($name): $(cat "$WORK/lint.log")"; continue; fi
  ok
  # shellcheck disable=SC2086
  if ! helm template berth "$CHART" --namespace berth-system $args >"$WORK/$name.yaml" 2>"$WORK/err"; then
    fail "helm template ($name): $(cat "$WORK/err")"; continue
  fi
  ok
done
expect_kinds default "$WORK/default.yaml" "$COMMON DaemonSet=1 Deployment=1 Lease=1 MutatingWebhookConfiguration=1 PodDisruptionBudget=1 Role=1 RoleBinding=1 Secret=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds cert-manager "$WORK/cert-manager.yaml" "Certificate=2 $COMMON DaemonSet=1 Deployment=1 Issuer=2 Lease=1 MutatingWebhookConfiguration=1 PodDisruptionBudget=1 Role=1 RoleBinding=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds cert-manager-issuer "$WORK/cert-manager-issuer.yaml" "Certificate=1 $COMMON DaemonSet=1 Deployment=1 Lease=1 MutatingWebhookConfiguration=1 PodDisruptionBudget=1 Role=1 RoleBinding=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds self-generated "$WORK/self-generated.yaml" "$COMMON DaemonSet=1 Deployment=1 Lease=1 MutatingWebhookConfiguration=1 Role=1 RoleBinding=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds local "$WORK/local.yaml" "$COMMON Lease=1 MutatingWebhookConfiguration=1 Role=1 RoleBinding=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds no-agent "$WORK/no-agent.yaml" "$COMMON Deployment=1 Lease=1 MutatingWebhookConfiguration=1 Role=1 RoleBinding=1 Secret=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"

# What each option must say to the manager and the apiserver.
has() { grep -qF -- "$2" "$WORK/$1.yaml" && ok || fail "$1: no '$2' in the rendered chart"; }
hasnt() { grep -qF -- "$2" "$WORK/$1.yaml" && fail "$1: '$2' in the rendered chart" || ok; }
has default "replicas: 2"
has default "--leader-elect=true"
has default "--webhook-cert-dir=/etc/berth/webhook-cert"
has default "--manager-username=system:serviceaccount:berth-system:berth-manager"
has default "path: /healthz"
has default "image: berth:0.1.0"
has default "fieldPath: spec.nodeName"
has default "path: /run/containerd/containerd.sock"
has default "path: /var/lib/berth/node-agent"
has default "name: BERTH_RESIZE_MODE"
has image "image: example/berth:v9"
# On every object, and on the Deployment's and the DaemonSet's pods.
[[ $(grep -c 'team: platform' "$WORK/labels.yaml") == $(($(grep -c '^kind: ' "$WORK/labels.yaml") + 2)) ]] && ok \
  || fail "labels: not on every object and pod template"
has cert-manager "cert-manager.io/inject-ca-from: berth-system/berth-webhook-cert"
has cert-manager "--webhook-cert-dir=/etc/berth/webhook-cert"
has cert-manager-issuer "name: corp-ca"
hasnt default "cert-manager.io/inject-ca-from"
hasnt self-generated "--webhook-cert-dir"
has self-generated "replicas: 1"
# The chart's rules are config/rbac's: every resource line of the source is rendered.
for f in manager.yaml node-agent.yaml; do
  while read -r resource; do
    grep -qF -- "  - $resource" "$WORK/default.yaml" && ok || fail "config/rbac/$f resource $resource not in the chart's RBAC"
  done < <(grep -E '^  resources: \[' "config/rbac/$f" | sed -E 's/.*\[(.*)\]/\1/' | tr ',' '\n' | tr -d ' ' | sort -u)
done
# CRDs ship with the chart (installed by helm install, never upgraded by it).
helm template berth "$CHART" --include-crds >"$WORK/crds.yaml"
[[ $(grep -c '^kind: CustomResourceDefinition' "$WORK/crds.yaml") == 2 ]] && ok || fail "helm template --include-crds: expected 2 CRDs"

# The Helm-generated certificate: signed by ca.crt, for the Service's names.
secret() { awk '/^kind: Secret/{s=1} s && $1 == "'"$1"':" {print $2; exit}' "$WORK/default.yaml" | base64 -d; }
secret tls.crt >"$WORK/tls.crt"; secret ca.crt >"$WORK/ca.crt"
if openssl verify -CAfile "$WORK/ca.crt" "$WORK/tls.crt" >/dev/null 2>&1; then ok; else fail "Helm-generated tls.crt does not verify against its ca.crt"; fi
for name in berth-webhooks.berth-system.svc berth-webhooks.berth-system.svc.cluster.local; do
  openssl x509 -in "$WORK/tls.crt" -noout -ext subjectAltName | grep -qF "DNS:$name" && ok || fail "tls.crt has no SAN $name"
done

# 3. Refusals: each says what is wrong.
refuse() {
  local what=$1 needle=$2; shift 2
  if helm template berth "$CHART" "$@" >/dev/null 2>"$WORK/err"; then fail "$what: accepted"; return; fi
  grep -qF -- "$needle" "$WORK/err" && ok || fail "$what: refused without '$needle': $(cat "$WORK/err")"
}
refuse "an unknown top-level value" "additional properties 'replicas' not allowed" --set replicas=3
refuse "a misspelt manager value" "additional properties 'replica' not allowed" --set manager.replica=3
refuse "an unknown webhook value" "additional properties 'caBundle' not allowed" --set webhook.caBundle=x
refuse "an unknown certificates source" "value must be one of 'helm', 'cert-manager', 'self-generated'" --set webhook.certificates=vault
refuse "a timeout past 30 s" "/webhook/timeoutSeconds" --set webhook.timeoutSeconds=31
refuse "an unknown resize mode" "/nodeAgent/resizeMode" --set nodeAgent.resizeMode=fast
refuse "a relative CRI socket" "/nodeAgent/criSocket" --set nodeAgent.criSocket=containerd.sock
refuse "a flag without --" "/manager/extraArgs/0" --set 'manager.extraArgs[0]=leader-elect'
refuse "self-generated CA with 2 replicas" "webhook.certificates=self-generated needs manager.replicas=1" \
  --set webhook.certificates=self-generated
refuse "2 replicas without leader election" "needs manager.leaderElection.enabled=true" \
  --set manager.leaderElection.enabled=false

# 4. Kustomize: every overlay builds, with the objects it should have.
for dir in crd rbac common manager node-agent default cert-manager local; do
  if kustomize "config/$dir" >"$WORK/k-$dir.yaml" 2>"$WORK/err"; then ok; else fail "kustomize config/$dir: $(cat "$WORK/err")"; fi
done
expect_kinds "config/default" "$WORK/k-default.yaml" "$COMMON CustomResourceDefinition=2 DaemonSet=1 Deployment=1 Lease=1 MutatingWebhookConfiguration=1 Namespace=1 Role=1 RoleBinding=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds "config/cert-manager" "$WORK/k-cert-manager.yaml" "Certificate=2 $COMMON CustomResourceDefinition=2 DaemonSet=1 Deployment=1 Issuer=2 Lease=1 MutatingWebhookConfiguration=1 Namespace=1 PodDisruptionBudget=1 Role=1 RoleBinding=1 Service=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
expect_kinds "config/local" "$WORK/k-local.yaml" "$COMMON CustomResourceDefinition=2 Lease=1 MutatingWebhookConfiguration=1 Namespace=1 Role=1 RoleBinding=1 ServiceAccount=2 ValidatingWebhookConfiguration=1"
grep -qF -- "BERTH_WEBHOOK_CERT_DIR" "$WORK/k-cert-manager.yaml" && ok || fail "config/cert-manager: the manager does not mount the certificate"
grep -qF -- "replicas: 2" "$WORK/k-cert-manager.yaml" && ok || fail "config/cert-manager: not 2 replicas"
[[ $(grep -c 'cert-manager.io/inject-ca-from' "$WORK/k-cert-manager.yaml") == 2 ]] && ok || fail "config/cert-manager: CA injector annotation not on both configurations"

echo "chart-check: $((checks - failures)) passed, $failures failed"
[[ $failures == 0 ]]
