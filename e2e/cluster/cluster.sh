#!/usr/bin/env bash
# The local test cluster: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and simulated (kubemark hollow) nodes, all built from the
# Kubernetes Go modules into one binary (berth-k8s) and run as host processes.
#
#   cluster.sh up [--nodes N]   start (or keep) the cluster; writes $STATE/kubeconfig
#   cluster.sh down             stop every process and delete the state
#   cluster.sh status           what is running
#   cluster.sh token NS SA      mint a token for a service account
#   cluster.sh kubeconfig NS SA FILE   write a kubeconfig acting as that service account
#   cluster.sh nodes N          start another hollow-fleet process adding N nodes
#   cluster.sh kwok-nodes N     add N nodes simulated by kwok (one process for all; for scale)
#   cluster.sh real-node        add real-node-0: a real kubelet on a real containerd (runc,
#                               CNI bridge), tainted berth.dev/real-node=true:NoSchedule
#   cluster.sh restart-apiserver   stop kube-apiserver and start it again (same flags and port)
#
# Environment: BERTH_K8S (the binary), E2E_STATE (default target/e2e),
# HOLLOW_MAX_PODS (pods each hollow node accepts, default 110, as a kubelet's).
# HOLLOW_NODES_PER_FLEET (hollow nodes per fleet process; default from the open-files limit).
# HOLLOW_KUBE_API_QPS (client QPS of each hollow kubelet, burst twice that; default 50, a
#   kubelet's kubeAPIQPS; kubemark's own default of 10 is shared there with the kubelet's Events).
# BERTH_KWOK (the kwok binary, `make kwok-bin`; its stages.yaml beside it), for kwok-nodes.
# REAL_NODE_MAX_PODS (pods the real node accepts, default 600).
# APISERVER_PROFILING=true serves kube-apiserver's /debug/pprof (for profiling a bench; off by default).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${E2E_STATE:-$ROOT/target/e2e}"
BIN="${BERTH_K8S:-}"
PKI="$STATE/pki" LOGS="$STATE/logs" PIDS="$STATE/pids"
KUBECONFIG_FILE="$STATE/kubeconfig"

# Every hollow node holds sockets and watches: hundreds of nodes need more
# than the usual 1024 descriptors (root may raise the hard limit too).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# free_port_range N: the first of N consecutive free ports (hollow kubelets use
# first..first+N-1), from 20000 up in steps of 1000, so that a second cluster
# on this host does not take the first one's kubelet ports.
free_port_range() {
  python3 - "$1" <<'PY'
import socket, sys
n = int(sys.argv[1])
def free(port):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
for base in range(20000, 65536 - n, 1000):
    if all(free(p) for p in range(base, base + n)):
        print(base)
        sys.exit(0)
sys.exit("no free range of %d ports" % n)
PY
}

# start NAME ARGS...: run a component in the background, its log in $LOGS/NAME.log.
start() {
  local name="$1"; shift
  # setsid: its own process group, so `down` can stop it and its children.
  setsid "$BIN" "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
}

alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# stop_groups PID...: each component leads its own process group (setsid):
# TERM every group, give each leader up to 10 s, then KILL what is left.
stop_groups() {
  local pid i
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    i=0; while kill -0 "$pid" 2>/dev/null && (( i < 50 )); do sleep 0.2; i=$((i + 1)); done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}

# wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds; fail naming the log.
wait_for() {
  local name="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited during start-up; see $LOGS/$name.log"
    fi
    if (( SECONDS > deadline )); then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name not ready after ${secs}s; see $LOGS/$name.log"
    fi
    sleep 0.3
  done
}

kubectl() { "$BIN" kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# cert NAME CN ORG [SANS]: a key and a certificate signed by the cluster CA.
cert() {
  local name="$1" cn="$2" org="$3" sans="${4:-}"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  local subj="/CN=$cn"; [[ -n "$org" ]] && subj="/O=$org$subj"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext="$PKI/$name.ext"
  if [[ -n "$sans" ]]; then
    printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans" >"$ext"
  else
    printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$ext"
  fi
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

# write_kubeconfig FILE SERVER USER [cert|token] VALUE...
write_kubeconfig() {
  local file="$1" server="$2" user="$3" kind="$4"
  {
    cat <<YAML
apiVersion: v1
kind: Config
clusters:
- name: berth-local
  cluster:
    server: $server
    certificate-authority: $PKI/ca.crt
contexts:
- name: $user@berth-local
  context: {cluster: berth-local, user: $user}
current-context: $user@berth-local
users:
- name: $user
  user:
YAML
    if [[ "$kind" == cert ]]; then
      printf '    client-certificate: %s\n    client-key: %s\n' "$5" "$6"
    else
      printf '    token: %s\n' "$5"
    fi
  } >"$file"
}

make_pki() {
  mkdir -p "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key.ec" 2>/dev/null
  # PKCS#8, which the hollow fleet's Go code and the controller-manager's signer both read.
  openssl pkcs8 -topk8 -nocrypt -in "$PKI/ca.key.ec" -out "$PKI/ca.key"; rm -f "$PKI/ca.key.ec"
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=berth-local-ca" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" \
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

cmd_up() {
  local nodes=3
  while (( $# )); do
    case "$1" in
      --nodes) nodes="$2"; shift 2 ;;
      *) die "unknown flag $1 (allowed: --nodes N)" ;;
    esac
  done
  [[ -n "$BIN" && -x "$BIN" ]] || die "BERTH_K8S must name the berth-k8s binary (make k8s-bin builds it); got '${BIN}'"
  if alive kube-apiserver; then
    log "already running; kubeconfig: $KUBECONFIG_FILE"
    return 0
  fi
  cmd_down >/dev/null 2>&1 || true
  mkdir -p "$LOGS" "$PIDS" "$STATE/etcd" "$STATE/nodes"
  # A failed start leaves nothing running; the logs stay for the reader.
  trap 'rc=$?; (( rc == 0 )) || cmd_down >/dev/null 2>&1' EXIT
  local t0=$SECONDS
  make_pki

  local etcd_port etcd_peer api_port cm_port sched_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  cm_port=$(free_port); sched_port=$(free_port)
  local server="https://127.0.0.1:$api_port"
  echo "$server" >"$STATE/server"

  log "etcd on 127.0.0.1:$etcd_port"
  # --unsafe-no-fsync: a throwaway test store; durability buys nothing here.
  start etcd etcd --name berth-local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "berth-local=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync \
    --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) --log-level warn
  wait_for etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"

  log "kube-apiserver on $server"
  start kube-apiserver kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling="${APISERVER_PROFILING:-false}" \
    --max-requests-inflight 800 --max-mutating-requests-inflight 400
  write_kubeconfig "$KUBECONFIG_FILE" "$server" admin cert "$PKI/admin.crt" "$PKI/admin.key"
  wait_for kube-apiserver 120 curl -sf --cacert "$PKI/ca.crt" "$server/readyz"

  write_kubeconfig "$STATE/controller-manager.kubeconfig" "$server" controller-manager cert \
    "$PKI/controller-manager.crt" "$PKI/controller-manager.key"
  write_kubeconfig "$STATE/scheduler.kubeconfig" "$server" scheduler cert "$PKI/scheduler.crt" "$PKI/scheduler.key"

  log "kube-controller-manager, kube-scheduler"
  start kube-controller-manager kube-controller-manager \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$cm_port" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --kube-api-qps 200 --kube-api-burst 400 --concurrent-statefulset-syncs 10
  start kube-scheduler kube-scheduler \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false
  wait_for kube-controller-manager 60 curl -sfk "https://127.0.0.1:$cm_port/healthz"
  wait_for kube-scheduler 60 curl -sfk "https://127.0.0.1:$sched_port/healthz"

  cmd_nodes "$nodes"
  # The controller manager creates each namespace's default service account.
  wait_for kube-controller-manager 60 kubectl get serviceaccount default -n default
  trap - EXIT
  log "up in $((SECONDS - t0))s: $nodes nodes; export KUBECONFIG=$KUBECONFIG_FILE"
}

# cmd_nodes N: one more hollow-fleet process with N nodes, named after those that exist.
# Each hollow kubelet holds inotify instances (static pods, plugin watcher);
# the default limit of 128 per user stops a fleet of ~60 nodes at start-up.
raise_inotify_limit() {
  local want=$(( 4 * $1 + 512 )) file=/proc/sys/fs/inotify/max_user_instances
  if (( $(cat "$file") < want )); then
    if echo "$want" >"$file" 2>/dev/null; then
      log "fs.inotify.max_user_instances raised to $want for $1 hollow nodes"
    else
      log "WARNING: fs.inotify.max_user_instances is $(cat "$file"); $1 hollow nodes need about $want (run as root or raise it)"
    fi
  fi
}

cmd_nodes() {
  local count="$1" first=0 fleet=0
  while [[ -f "$PIDS/hollow-fleet-$fleet.pid" ]]; do
    first=$((first + $(cat "$STATE/hollow-fleet-$fleet.count"))); fleet=$((fleet + 1))
  done
  raise_inotify_limit $((first + count))
  ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
  # A hollow node holds about 20 descriptors (sockets, watches): one fleet
  # process per HOLLOW_NODES_PER_FLEET nodes keeps each well under the open-files limit.
  local per=${HOLLOW_NODES_PER_FLEET:-$(( ($(ulimit -Sn) - 1024) / 64 ))}
  (( per >= 1 )) || per=1
  while (( count > 0 )); do
    local n=$(( count < per ? count : per )) name="hollow-fleet-$fleet"
    echo "$n" >"$STATE/$name.count"
    log "$name: $n hollow nodes (hollow-node-$first..$((first + n - 1)))"
    start "$name" hollow-fleet --count "$n" --first-index "$first" \
      --first-port "$(free_port_range "$n")" \
      --server "$(cat "$STATE/server")" --ca-cert "$PKI/ca.crt" --ca-key "$PKI/ca.key" \
      --state-dir "$STATE/nodes" --max-pods "${HOLLOW_MAX_PODS:-110}" \
      --kube-api-qps "${HOLLOW_KUBE_API_QPS:-50}" --v 1
    first=$((first + n)); fleet=$((fleet + 1)); count=$((count - n))
    # A loaded apiserver (a thousand nodes already) registers a fleet slowly.
    wait_for "$name" $((120 + n)) nodes_ready "$first"
  done
}

# cmd_kwok_nodes N: N more Node objects (kwok-node-I), kept alive by one kwok
# process: it initializes them, renews their leases (40 s, a kubelet's
# default) and runs the pods bound to them through kwok's stock stages. The
# taint keeps other workloads on the hollow nodes, whose kubelet code the
# in-place paths need; the nodes still count for the scheduler, the
# controllers' node watches and the apiserver's load.
cmd_kwok_nodes() {
  local count="${1:-}" kwok="${BERTH_KWOK:-}" first
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || die "kwok-nodes takes a node count, a whole number of 1 or more; got '$count'"
  [[ -n "$kwok" && -x "$kwok" ]] || die "BERTH_KWOK must name the kwok binary (make kwok-bin builds it); got '${kwok}'"
  first=$(kubectl get nodes -l berth.dev/node-simulator=kwok --no-headers 2>/dev/null | wc -l)
  if ! alive kwok; then
    setsid "$kwok" --kubeconfig "$KUBECONFIG_FILE" --config "$(dirname "$kwok")/stages.yaml" \
      --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
      --node-lease-duration-seconds 40 --cidr 10.128.0.0/12 --v WARN >"$LOGS/kwok.log" 2>&1 < /dev/null &
    echo $! >"$PIDS/kwok.pid"
  fi
  log "kwok: $count nodes (kwok-node-$first..$((first + count - 1)))"
  local i
  for (( i = first; i < first + count; i++ )); do
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, berth.dev/node-simulator: kwok}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
YAML
  done > "$STATE/kwok-nodes.yaml"
  kubectl create -f "$STATE/kwok-nodes.yaml" >/dev/null
  wait_for kwok $((60 + count / 10)) nodes_ready $((first + count)) -l berth.dev/node-simulator=kwok
}

# cmd_real_node: one node that runs its pods for real: the upstream kubelet
# (in berth-k8s) on a containerd of its own (e2e/containerd/containerd.sh:
# runc, Debian's CNI bridge, the local busybox images :1 and :2, no registry).
# Its taint keeps every pod that does not ask for it on the hollow nodes.
# Needs root. The kubelet sets a node's kernel tunables (vm.overcommit_memory,
# kernel.panic, kernel.panic_on_oops): `down` puts back the values it found.
REAL_NODE=real-node-0
cmd_real_node() {
  [[ -n "$BIN" && -x "$BIN" ]] || die "BERTH_K8S must name the berth-k8s binary; got '${BIN}'"
  alive kube-apiserver || die "kube-apiserver is not running (cluster.sh up first)"
  [[ $(id -u) == 0 ]] || die "a real node needs root (cgroups, mounts, network namespaces)"
  if alive kubelet; then log "$REAL_NODE already running"; return 0; fi
  local dir="$STATE/real-node" node_ip
  node_ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
  [[ -n "$node_ip" ]] || die "the real node needs a non-loopback IPv4 address (a kubelet refuses 127.0.0.1); none found"
  mkdir -p "$dir/kubelet" "$dir/pod-logs"
  if [[ ! -f "$dir/sysctl.saved" ]]; then
    local k; for k in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops; do
      printf '%s %s\n' "$k" "$(cat "/proc/sys/$k")"
    done >"$dir/sysctl.saved"
  fi
  CONTAINERD_STATE="$dir/containerd" CONTAINERD_CNI_SUBNET=10.89.0.0/16 "$ROOT/e2e/containerd/containerd.sh" up
  cert "$REAL_NODE" "system:node:$REAL_NODE" system:nodes
  write_kubeconfig "$dir/kubeconfig" "$(cat "$STATE/server")" "$REAL_NODE" cert "$PKI/$REAL_NODE.crt" "$PKI/$REAL_NODE.key"
  cat >"$dir/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: $PKI/ca.crt}}
authorization: {mode: AlwaysAllow}
# containerd 1.6 cannot report its cgroup driver (CRI RuntimeConfig); it is cgroupfs here.
cgroupDriver: cgroupfs
# Hosts of this kind are on cgroup v1 (hybrid); a 1.37 kubelet refuses v1 unless told.
failCgroupV1: false
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
failSwapOn: false
maxPods: ${REAL_NODE_MAX_PODS:-600}
podPidsLimit: -1
kubeAPIQPS: 50
kubeAPIBurst: 100
serializeImagePulls: false
# The images are imported, never pulled: image GC must not remove them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
podLogsDir: $dir/pod-logs
resolvConf: ""
registerWithTaints: [{key: berth.dev/real-node, value: "true", effect: NoSchedule}]
YAML
  log "kubelet: $REAL_NODE ($node_ip), containerd $dir/containerd"
  start kubelet kubelet --config "$dir/config.yaml" --kubeconfig "$dir/kubeconfig" \
    --hostname-override "$REAL_NODE" --node-ip "$node_ip" --root-dir "$dir/kubelet" \
    --node-labels "berth.dev/node-simulator=none,berth.dev/real-node=true" --v 1
  wait_for kubelet 120 nodes_ready 1 -l berth.dev/real-node=true
  log "$REAL_NODE Ready"
}

# real_node_down: the kubelet first (so it starts nothing new), then containerd
# and every container, then what the kubelet left on the host.
real_node_down() {
  local dir="$STATE/real-node"
  [[ -d "$dir" ]] || return 0
  local kubelets=()
  alive kubelet && kubelets+=("$(cat "$PIDS/kubelet.pid")")
  # And any kubelet on this node's config started by hand (e.g. again with more -v for a trace).
  mapfile -t -O "${#kubelets[@]}" kubelets < <(pgrep -f -- "kubelet --config $dir/config.yaml" || true)
  (( ${#kubelets[@]} == 0 )) || stop_groups "${kubelets[@]}"
  CONTAINERD_STATE="$dir/containerd" "$ROOT/e2e/containerd/containerd.sh" down || true
  local m
  for m in $(awk -v s="$dir/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  local d
  for d in $(find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d 2>/dev/null); do rmdir "$d" 2>/dev/null || true; done
  if [[ -f "$dir/sysctl.saved" ]]; then
    local k v; while read -r k v; do echo "$v" >"/proc/sys/$k" 2>/dev/null || true; done <"$dir/sysctl.saved"
  fi
  rm -rf "$dir"
}

# nodes_ready N [SELECTOR...]: at least N nodes (of those selected) are Ready.
nodes_ready() {
  local want="$1" ready; shift
  ready=$(kubectl get nodes --no-headers "$@" 2>/dev/null | awk '$2 == "Ready"' | wc -l)
  (( ready >= want ))
}

cmd_down() {
  local stopped=0
  real_node_down
  if [[ -d "$PIDS" ]]; then
    local f pids=()
    for f in "$PIDS"/*.pid; do
      [[ -e "$f" ]] || continue
      pids+=("$(cat "$f")")
      kill -0 "${pids[-1]}" 2>/dev/null && stopped=$((stopped + 1))
    done
    (( ${#pids[@]} == 0 )) || stop_groups "${pids[@]}"
  fi
  rm -rf "$STATE/etcd" "$STATE/nodes" "$PIDS" "$PKI" "$STATE"/*.kubeconfig "$STATE/kubeconfig" \
    "$STATE/server" "$STATE"/hollow-fleet-*.count "$STATE/kwok-nodes.yaml"
  log "down: stopped $stopped processes (logs kept in $LOGS)"
}

# cmd_restart_apiserver: stop kube-apiserver and start it again with the same
# flags and port (read from the running process), waiting for /readyz. Every
# client sees its connections and watches drop, as in a control-plane upgrade.
cmd_restart_apiserver() {
  [[ -n "$BIN" && -x "$BIN" ]] || die "BERTH_K8S must name the berth-k8s binary; got '${BIN}'"
  alive kube-apiserver || die "kube-apiserver is not running (cluster.sh up first)"
  local pid args=() t0=$SECONDS
  pid=$(cat "$PIDS/kube-apiserver.pid")
  # argv: berth-k8s kube-apiserver --flag ...; keep everything after the binary.
  mapfile -d '' -t args < "/proc/$pid/cmdline"
  stop_groups "$pid"
  log "kube-apiserver stopped; starting it again"
  setsid "$BIN" "${args[@]:1}" >>"$LOGS/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/kube-apiserver.pid"
  wait_for kube-apiserver 120 curl -sf --cacert "$PKI/ca.crt" "$(cat "$STATE/server")/readyz"
  log "kube-apiserver restarted in $((SECONDS - t0))s"
}

cmd_status() {
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || { echo "not running"; return 1; }
    local name; name=$(basename "$f" .pid)
    if alive "$name"; then echo "$name running (pid $(cat "$f"))"; else echo "$name DEAD (see $LOGS/$name.log)"; fi
  done
}

cmd_token() {
  local ns="${1:?namespace}" sa="${2:?service account}"
  kubectl create token "$sa" -n "$ns" --duration 24h
}

cmd_kubeconfig() {
  local ns="${1:?namespace}" sa="${2:?service account}" file="${3:?output file}"
  write_kubeconfig "$file" "$(cat "$STATE/server")" "system:serviceaccount:$ns:$sa" token "$(cmd_token "$ns" "$sa")"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  token) shift; cmd_token "$@" ;;
  kubeconfig) shift; cmd_kubeconfig "$@" ;;
  nodes) shift; cmd_nodes "$@" ;;
  kwok-nodes) shift; cmd_kwok_nodes "$@" ;;
  real-node) cmd_real_node ;;
  restart-apiserver) cmd_restart_apiserver ;;
  *) echo "usage: cluster.sh up [--nodes N] | down | status | token NS SA | kubeconfig NS SA FILE | nodes N | kwok-nodes N | real-node | restart-apiserver" >&2; exit 2 ;;
esac
