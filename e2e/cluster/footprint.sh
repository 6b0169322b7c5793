#!/usr/bin/env bash
# Measures the local cluster: start time and peak memory (VmHWM) of each
# component with N simulated nodes running P pods. Not a test: it prints numbers.
#   footprint.sh NODES [PODS]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
NODES="${1:?usage: footprint.sh NODES [PODS]}" PODS="${2:-$((NODES * 10))}"
STATE="${E2E_STATE:?}" BIN="${BERTH_K8S:?}"
kubectl() { "$BIN" kubectl --kubeconfig "$STATE/kubeconfig" "$@"; }

"$HERE/cluster.sh" down >/dev/null 2>&1 || true
start=$EPOCHREALTIME
"$HERE/cluster.sh" up --nodes "$NODES" >/dev/null
up=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')

kubectl create deployment footprint --image=footprint/app:1 --replicas "$PODS" >/dev/null
t0=$EPOCHREALTIME
kubectl rollout status deployment/footprint --timeout 600s >/dev/null
ready=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')
sleep 15 # let periodic work (node status, leases) run at steady state

printf 'nodes=%s pods=%s cluster_up_s=%.1f pods_ready_s=%.1f\n' "$NODES" "$PODS" "$up" "$ready"
printf '%-26s %10s %10s\n' component peak_MiB now_MiB
total_peak=0
for f in "$STATE"/pids/*.pid; do
  name=$(basename "$f" .pid); pid=$(cat "$f")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status"); rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  total_peak=$((total_peak + hwm))
  printf '%-26s %10d %10d\n' "$name" $((hwm / 1024)) $((rss / 1024))
done
printf '%-26s %10d\n' "sum of peaks" $((total_peak / 1024))
"$HERE/cluster.sh" down >/dev/null
