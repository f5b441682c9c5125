# Host-side setup of hack/node/node.sh (sourced): sysctls, the pods' cgroup folder, the bridge and nft rules, and
# their undoing. Everything here is recorded at `up` and undone by `down`.
SYSCTLS_SAVED=/run/textgen-node.sysctls   # outside .node/: survives a removed state folder until restored
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables
         net.bridge.bridge-nf-call-ip6tables net.ipv4.conf.all.route_localnet)
CGROUP_CREATED="$NODE_STATE/cgroups.created"

save_sysctls() {
  [ -f "$SYSCTLS_SAVED" ] && return 0   # an earlier run was not undone: keep the original values
  local k; for k in "${SYSCTLS[@]}"; do
    [ -e "/proc/sys/${k//.//}" ] && echo "$k=$(sysctl -n "$k")"
  done > "$SYSCTLS_SAVED.tmp" || true
  mv "$SYSCTLS_SAVED.tmp" "$SYSCTLS_SAVED"
}

restore_sysctls() {
  [ -f "$SYSCTLS_SAVED" ] || return 0
  local line; while read -r line; do sysctl -q -w "$line" >/dev/null 2>&1 || log "could not restore $line"; done < "$SYSCTLS_SAVED"
  rm -f "$SYSCTLS_SAVED"
}

# The kubelet's cgroupRoot: a folder inside the caller's memory cgroup, created in every v1 hierarchy (the kubelet
# requires it to exist; cpuset levels need cpus/mems copied from their parent). Prints the cgroup path.
make_cgroup_root() {
  local base root h path level parent
  base="$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)"
  root="${base%/}/textgen-node"
  : > "$CGROUP_CREATED"
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"; [ "$h" = /sys/fs/cgroup/unified ] && continue
    [ -f "$h/cgroup.procs" ] || continue
    path="$h"
    for level in ${root//\// }; do
      parent="$path"; path="$path/$level"
      [ -d "$path" ] && continue
      mkdir "$path" && echo "$path" >> "$CGROUP_CREATED"
      if [ -f "$parent/cpuset.cpus" ]; then
        cat "$parent/cpuset.cpus" > "$path/cpuset.cpus"; cat "$parent/cpuset.mems" > "$path/cpuset.mems"
      fi
    done
  done
  echo "$root"
}

remove_cgroup_root() {
  [ -f "$NODE_STATE/ports.env" ] || return 0
  local root h d
  root="$(. "$NODE_STATE/ports.env"; echo "${CGROUP_ROOT:-}")"
  [ -n "$root" ] || return 0
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$root" ] && find "$h$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  [ -f "$CGROUP_CREATED" ] && tac "$CGROUP_CREATED" | while read -r d; do rmdir "$d" 2>/dev/null || true; done
  return 0
}

setup_network() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # kube-proxy's service NAT must see bridged pod-to-pod traffic (a pod reaching its own Service).
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1 >/dev/null
  # Pods talk to pods, Services and the node only: whatever a pod would send off the node is dropped.
  nft -f - <<EOF
table inet $NFT_TABLE {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname "$BRIDGE" oifname != "$BRIDGE" counter drop comment "pods: nothing leaves the node"
    ip saddr $POD_CIDR oifname != "$BRIDGE" counter drop
  }
}
EOF
}

# Rules the kubelet adds with iptables (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...): remove jumps, then chains.
remove_kube_iptables() {
  local cmd t rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for t in filter nat mangle; do
      { "$cmd" -t "$t" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } | while read -r rule; do
        eval "$cmd -t $t -D ${rule#-A }" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$cmd" -t "$t" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$cmd" -t "$t" -X "$chain" 2>/dev/null || true
      done
      # iptables-nft made the table for the kubelet: drop it when nothing but default policies is left.
      if ! "$cmd" -t "$t" -S 2>/dev/null | grep -qv '^-P '; then
        nft delete table "$([ "$cmd" = iptables ] && echo ip || echo ip6)" "$t" 2>/dev/null || true
      fi
    done
  done
}

teardown_network() {
  local ns
  # Pod network namespaces containerd's CRI made (cni-<uuid>); ours is the only CRI runtime on the machine.
  for ns in /var/run/netns/cni-*; do [ -e "$ns" ] && ip netns delete "$(basename "$ns")" 2>/dev/null; done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  remove_kube_iptables
  return 0
}

unmount_under() { # paths...: every mount on or below them, deepest first (the kubelet bind-mounts its root dir)
  local p
  for p in "$@"; do
    awk -v p="$p" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
      umount "$(printf '%b' "$m")" 2>/dev/null || umount -l "$(printf '%b' "$m")" 2>/dev/null || log "cannot unmount $m"
    done
  done
}

remove_all_containers() {
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
}
