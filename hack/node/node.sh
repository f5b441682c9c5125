#!/usr/bin/env bash
# A real Kubernetes node beside the local control plane (hack/cluster): containerd + runc (Debian's), CNI bridge,
# kubelet, kube-proxy (nftables), kube-scheduler and CoreDNS, all as host processes started by this script.
#
#   hack/node/node.sh up       # its control plane (.node-cluster/, node mode), images, node; idempotent
#   hack/node/node.sh down     # stop the node's pods and processes, undo its network, mounts, cgroups, sysctls
#   hack/node/node.sh status   # processes and memory (RSS), the node's pods
#
# What it changes on the host, and `down` undoes: bridge textgen0 (10.244.0.1/24), nft table inet textgen-node
# (pods may not send anything off the node), kube-proxy's nft tables, the kubelet's iptables chains, pod netns
# (/var/run/netns/cni-*), mounts under .node/ and containerd's run dir, the cgroup folder the pods live in, and the
# sysctls the kubelet and the bridge set (saved at `up`, restored at `down`).
set -euo pipefail
LOG_TAG=node
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$NODE_LIB_HERE/procs.sh"
. "$NODE_LIB_HERE/hostnet.sh"

NODE_IP="$(node_ip)"
KUBELET_DIR="$NODE_STATE/kubelet"
PKI="$NODE_STATE/pki"
CLUSTER_PKI="$CLUSTER_STATE/pki"
# Start order; `down` stops them in reverse. containerd is Debian's /usr/bin/containerd, the rest are ours.
COMPONENTS=(containerd kube-scheduler coredns kube-proxy kubelet)
exe_of() { case "$1" in containerd) command -v containerd ;; *) echo "$BIN/$1" ;; esac; }

kc() { "$BIN/kubectl" --kubeconfig "$CLUSTER_STATE/kubeconfig" "$@"; }

# ---------------------------------------------------------------- certificates and kubeconfigs

sign_client() { # name subject [extra SAN line]
  (cd "$PKI" && umask 077 \
    && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" \
         -subj "$2" 2>/dev/null \
    && openssl x509 -req -in "$1.csr" -CA "$CLUSTER_PKI/ca.crt" -CAkey "$CLUSTER_PKI/ca.key" -CAcreateserial \
         -CAserial "$PKI/ca.srl" -out "$1.crt" -days 3650 2>/dev/null \
         -extfile <(printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s' "${4:-clientAuth}" "${3:-}") \
    && rm -f "$1.csr")
}

write_kubeconfig() { # name
  . "$CLUSTER_STATE/ports.env"
  cat > "$PKI/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$CLUSTER_PKI/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$PKI/$1.crt", client-key: "$PKI/$1.key"}}]
contexts: [{name: local, context: {cluster: local, user: $1}}]
current-context: local
EOF
  chmod 600 "$PKI/$1.kubeconfig"
}

make_credentials() {
  mkdir -p "$PKI"
  sign_client kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  sign_client kubelet-serving "/CN=system:node:$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME" serverAuth
  sign_client kube-proxy "/CN=system:kube-proxy"          # bound to system:node-proxier by default
  sign_client kube-scheduler "/CN=system:kube-scheduler"  # bound to system:kube-scheduler by default
  sign_client coredns "/CN=textgen:coredns"               # bound below to read-only service discovery
  local n; for n in kubelet kube-proxy kube-scheduler coredns; do write_kubeconfig "$n"; done
  kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "textgen:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "textgen:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "textgen:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "textgen:coredns"}]
EOF
}

# ---------------------------------------------------------------- configuration files

write_configs() {
  local cgroup_root="$1" pause_image="$2"
  mkdir -p "$NODE_STATE/cni/net.d" "$NODE_STATE/containerd" "$KUBELET_DIR"
  . "$CLUSTER_STATE/ports.env"
  read -r KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT SCHED_PORT DNS_HEALTH_PORT \
    DNS_READY_PORT <<<"$(free_ports 7)"
  CGROUP_ROOT="$cgroup_root"
  write_env "$NODE_STATE/ports.env" KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT SCHED_PORT DNS_HEALTH_PORT \
    DNS_READY_PORT NODE_IP CGROUP_ROOT
  # CNI: one bridge, host-local addresses, portmap (hostPort); no IP masquerade: pods never leave the node.
  cat > "$NODE_STATE/cni/net.d/10-textgen.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "textgen", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE_STATE/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  # containerd (CRI). restrict_oom_score_adj: this sandbox lacks CAP_SYS_RESOURCE, runc fails without it.
  cat > "$NODE_STATE/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_RUN/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_STATE/cni/net.d"
EOF
  # kubelet: cgroupfs (no systemd), cgroup v1 accepted, pods under our own cgroup folder, no host DNS upstream.
  # protectKernelDefaults false: it then sets vm.overcommit_memory, kernel.panic*, which `down` restores.
  cat > "$KUBELET_DIR/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $CLUSTER_PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: $cgroup_root
failSwapOn: false
protectKernelDefaults: false
clusterDNS: [$BRIDGE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: ""
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
EOF
  cat > "$NODE_STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
# 0: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  # CoreDNS: the cluster domain from the API, nothing else (no forward plugin is even built in).
  cat > "$NODE_STATE/Corefile" <<EOF
.:53 {
    bind $BRIDGE_IP
    errors
    health 127.0.0.1:$DNS_HEALTH_PORT
    ready 127.0.0.1:$DNS_READY_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $PKI/coredns.kubeconfig local
        pods insecure
    }
    cache 30
}
EOF
}

# ---------------------------------------------------------------- readiness

containerd_ready() { ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }
http_ok() { curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null | grep -qx 200; }
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
all_running() {
  local c
  [ -f "$NODE_STATE/ports.env" ] || return 1
  for c in "${COMPONENTS[@]}"; do [ -n "$(pid_of "$c")" ] || return 1; done
  node_ready
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t0 t; t0=$(date +%s)
  [ "$(id -u)" = 0 ] || die "the node needs root (containers, network, cgroups)"
  [ -n "$NODE_IP" ] || die "no non-loopback IPv4 address for the node"
  "$NODE_LIB_HERE/deps.sh"
  "$NODE_LIB_HERE/build.sh"
  # The control plane, started (or restarted) able to serve a node: see hack/cluster/cluster.sh.
  CLUSTER_NODE_IP="$NODE_IP" CLUSTER_DIR="$CLUSTER_STATE" PY="$PY" BIN="$BIN" "$ROOT/hack/cluster/cluster.sh" up >/dev/null
  if all_running; then log "already running"; return 0; fi
  cmd_down quiet
  mkdir -p "$NODE_STATE/logs" "$NODE_STATE/pids"
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed: stopping what was started (logs kept in $NODE_STATE/logs)"; cmd_down keep-logs; fi' EXIT
  save_sysctls
  local cgroup_root; cgroup_root="$(make_cgroup_root)"
  eval "$("$NODE_LIB_HERE/images.sh" --print)"   # PAUSE_IMAGE for containerd's config
  make_credentials
  write_configs "$cgroup_root" "$PAUSE_IMAGE"
  setup_network
  # No registry is reachable (nor may be tried): a pull goes to a closed loopback proxy port and fails at once.
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= http_proxy= https_proxy= no_proxy= \
    start_component containerd --config "$NODE_STATE/containerd/config.toml"
  wait_for containerd 30 containerd_ready || die "containerd did not start"
  t=$(date +%s); "$NODE_LIB_HERE/images.sh"; log "images ready in $(( $(date +%s) - t )) s"
  . "$NODE_STATE/ports.env"
  start_component kube-scheduler --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" --authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --profiling=false
  start_component coredns -conf "$NODE_STATE/Corefile"
  start_component kube-proxy --config="$NODE_STATE/kube-proxy.yaml"
  start_component kubelet --config="$KUBELET_DIR/config.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
    --root-dir="$KUBELET_DIR" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="node.kubernetes.io/instance-type=$INSTANCE_TYPE" -v=1
  wait_for coredns 30 http_ok "http://127.0.0.1:$DNS_READY_PORT/ready" || die "CoreDNS not ready"
  wait_for kube-proxy 60 http_ok "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" || die "kube-proxy not healthy"
  # The kubelet's own health first: a Node object left by an earlier run may still read Ready.
  wait_for kubelet 60 http_ok "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" || die "kubelet not healthy"
  wait_for kubelet 120 node_ready || die "node $NODE_NAME not Ready"
  trap - EXIT
  log "node $NODE_NAME ($NODE_IP, $INSTANCE_TYPE) Ready in $(( $(date +%s) - t0 )) s"
  kc get nodes -o wide >&2
}

cmd_down() {
  local mode="${1:-}" c pid
  # Pods first (kubelet stopped so that it restarts nothing), then the runtime, then what they left on the host.
  pid="$(pid_of kubelet)"; [ -z "$pid" ] || stop_pid kubelet "$pid"
  # The Node object goes too (its pods are gone with the runtime), when the control plane is still there.
  [ ! -f "$CLUSTER_STATE/kubeconfig" ] || kc delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if containerd_ready; then remove_all_containers; fi
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c="${COMPONENTS[$i]}"
    pid="$(pid_of "$c")"; [ -z "$pid" ] || stop_pid "$c" "$pid"
  done
  stop_orphan_shims
  [ ! -x "$BIN/kube-proxy" ] || "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  teardown_network
  unmount_under "$KUBELET_DIR" "$CONTAINERD_RUN"
  rm -rf "$CONTAINERD_RUN" /var/lib/cni/results/textgen-* /var/lib/cni/results/cni-loopback-*   # run state, CNI cache
  remove_cgroup_root
  restore_sysctls
  if [ "$mode" = keep-logs ]; then rm -rf "$NODE_STATE/pids"; else rm -rf "$NODE_STATE"; fi
  case "$mode" in
    quiet) ;;
    keep-logs) log "node down (logs kept in $NODE_STATE/logs)" ;;
    *) log "node down, state removed ($NODE_STATE)" ;;
  esac
}

cmd_status() {
  local rss total rc=0
  components_status "${COMPONENTS[@]}" || rc=1
  rss="$(shim_rss_kib)"; total=$(( COMPONENTS_RSS_KIB + rss ))
  printf '  %-24s              RSS %6d MiB\n' "containerd shims" $(( rss / 1024 )) "total" $(( total / 1024 ))
  [ -f "$NODE_STATE/ports.env" ] && pods_memory
  node_ready && echo "  node $NODE_NAME Ready" || { echo "  node $NODE_NAME not Ready"; rc=1; }
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
