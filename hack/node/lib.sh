# Shared settings of the local node scripts (sourced by deps.sh, build.sh, images.sh, node.sh).
# Machine-wide caches live under $TEXTGEN_CACHE (default ~/.cache/textgen-operator, as for hack/cluster);
# per-checkout state under $NODE_DIR (default .node/).
NODE_LIB_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$NODE_LIB_HERE/../lib.sh"
STOP_GRACE_S=10  # the kubelet and containerd take longer than the control plane to stop
NODE_CACHE="$CACHE_ROOT/node"
NODE_STATE="${NODE_DIR:-$ROOT/.node}"
# The node's own control plane (hack/cluster/cluster.sh in node mode), apart from the tests' .cluster/: tests that
# run meanwhile against .cluster/ neither see the node's pods nor land theirs on it.
CLUSTER_STATE="${CLUSTER_DIR:-$ROOT/.node-cluster}"

# One node per machine: the bridge, the nft tables and containerd's socket are machine-wide names.
NODE_NAME=textgen-node
INSTANCE_TYPE=m5.4xlarge
POD_CIDR=10.244.0.0/24
BRIDGE=textgen0
BRIDGE_IP=10.244.0.1        # also the cluster DNS address (CoreDNS binds it)
SERVICE_CIDR=10.0.0.0/24    # hack/cluster/cluster.sh's --service-cluster-ip-range
CLUSTER_DOMAIN=cluster.local
CONTAINERD_ROOT="$NODE_CACHE/containerd"      # its image store is the machine-wide image cache
CONTAINERD_RUN=/run/textgen-containerd
CONTAINERD_SOCK="$CONTAINERD_RUN/containerd.sock"
NFT_TABLE=textgen-node                        # our own nft table (pod egress guard)

# The Kubernetes version: the one hack/cluster/kube/go.mod pins (the API server's).
kube_version() { awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$ROOT/hack/cluster/kube/go.mod"; }

_T0=$(date +%s)
log() { printf '[%s +%ss] %s\n' "${LOG_TAG:-node}" "$(( $(date +%s) - _T0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The host's primary non-loopback IPv4 address: the kubelet refuses a loopback node IP.
node_ip() {
  local dev
  dev="$(ip -4 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')"
  ip -4 -o addr show ${dev:+dev "$dev"} scope global | awk '{sub(/\/.*/, "", $4); print $4; exit}'
}

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
