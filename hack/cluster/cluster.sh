#!/usr/bin/env bash
# A real local Kubernetes control plane plus the real KubeRay operator, all on 127.0.0.1 (the envtest pattern):
# etcd, kube-apiserver, kube-controller-manager (k8s.io/kubernetes built from its Go module) and the KubeRay
# operator (--use-kubernetes-proxy), with KubeRay's CRDs applied. No scheduler and no kubelet: pods stay Pending.
#
#   hack/cluster/cluster.sh up       # build if needed, start, wait until ready (idempotent)
#   hack/cluster/cluster.sh down     # stop every process it started (by PID) and remove the state (idempotent)
#   hack/cluster/cluster.sh status   # processes, memory (RSS), readiness
#   hack/cluster/cluster.sh env      # print `export KUBECONFIG=...`
#
# State lives in $CLUSTER_DIR (default .cluster/): kubeconfig, pki/, etcd/, logs/, pids/, ports.env.
# Ports are picked free at every `up` (several clones can run side by side).
#
# Node mode (CLUSTER_NODE_IP=<the host's non-loopback IP>, set by hack/node/node.sh): the API server also serves
# a real kubelet: it listens on all addresses (pods reach it through the `kubernetes` Service, whose endpoint is
# the node IP), authorizes nodes (Node,RBAC + NodeRestriction) and has a client certificate for kubelets (logs,
# exec, port-forward). `up` restarts a cluster that runs in the other mode.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../lib.sh"
STATE="${CLUSTER_DIR:-$ROOT/.cluster}"
KUBECONFIG_OUT="$STATE/kubeconfig"
NODE_IP="${CLUSTER_NODE_IP:-}"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
PKI="$STATE/pki"
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kuberay-operator)

T_START=$(date +%s%N)
log() { printf '[cluster +%ss] %s\n' "$(( ($(date +%s%N) - T_START) / 1000000000 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes

# pid_of NAME: the recorded PID if that process is alive and still runs our binary, else nothing.
pid_of() {
  local f="$PIDS/$1.pid" pid exe
  [ -f "$f" ] || return 0
  pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  # A recycled PID runs some other program: never signal that.
  case "$exe" in "$BIN/$1"|"$BIN/$1 (deleted)") echo "$pid" ;; esac
}


# Processes of ours whose PID file was lost (e.g. .cluster/ removed by hand while they ran): matched by the
# exact binary path under this checkout's .cache/bin AND this checkout's state folder in their command line or
# environment.
orphans_of() {
  local name="$1" p exe
  for p in /proc/[0-9]*; do
    exe="$(readlink "$p/exe" 2>/dev/null || true)"
    [ "$exe" = "$BIN/$name" ] || [ "$exe" = "$BIN/$name (deleted)" ] || continue
    # (the KubeRay operator names its kubeconfig in its environment, not on its command line)
    if cat "$p/cmdline" "$p/environ" 2>/dev/null | tr '\0' '\n' | grep -qF "$STATE/"; then echo "${p#/proc/}"; fi
  done
}

start_component() { # name, args...
  local name="$1"; shift
  mkdir -p "$PIDS" "$LOGS"
  # setsid: own session, so the caller's terminal or make's process group ending does not take it down.
  setsid "$BIN/$name" "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

# wait_for NAME SECONDS CMD...: poll CMD until it succeeds; fail early when NAME's process died.
wait_for() {
  local name="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs )) pid
  pid="$(cat "$PIDS/$name.pid")"
  until "$@" >/dev/null 2>&1; do
    # kill -0, not pid_of: right after the fork the child may not have exec'd the binary yet.
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited; last lines of $LOGS/$name.log:"; tail -n 30 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$name not ready after ${secs}s; last lines of $LOGS/$name.log:"; tail -n 30 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}


# ---------------------------------------------------------------- PKI and kubeconfig

make_pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    umask 077
    # ECDSA P-256 throughout: key generation is instant, unlike RSA on a busy 2-core machine.
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
    openssl req -x509 "${ec[@]}" -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=textgen-local-ca" 2>/dev/null
    sign() { # name subject extensions [CA, default ca]
      local ca="${4:-ca}"
      openssl req "${ec[@]}" -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -out "$1.crt" -days 3650 \
        -extfile <(printf '%b' "$3") 2>/dev/null
      rm -f "$1.csr"
    }
    sign apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:127.0.0.1,${NODE_IP:+IP:$NODE_IP,}DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
    # system:masters: cluster-admin for the user, the controller manager and the KubeRay operator.
    sign admin "/O=system:masters/CN=textgen-admin" \
      "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    # The aggregation layer's client (and the requestheader CA that controllers read from
    # kube-system/extension-apiserver-authentication).
    sign front-proxy-client "/CN=front-proxy-client" \
      "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    # The API server's client certificate towards kubelets (node mode).
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    # etcd has its own CA: a certificate from the cluster CA (a user's, a kubelet's) must not open etcd.
    openssl req -x509 "${ec[@]}" -nodes -keyout etcd-ca.key -out etcd-ca.crt -days 3650 \
      -subj "/CN=textgen-local-etcd-ca" 2>/dev/null
    # etcd serves clients and its (single) peer with TLS on loopback and requires client certificates on both.
    sign etcd-server "/CN=etcd-server" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n" etcd-ca
    # The only etcd client: the API server (the readiness probe borrows it).
    sign apiserver-etcd-client "/CN=kube-apiserver-etcd-client" \
      "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n" etcd-ca
    # Service-account token signing key (ES256).
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
    openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() { # port
  local b64="base64 -w0"
  cat > "$KUBECONFIG_OUT.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: textgen-local
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $($b64 < "$PKI/ca.crt")
users:
- name: textgen-admin
  user:
    client-certificate-data: $($b64 < "$PKI/admin.crt")
    client-key-data: $($b64 < "$PKI/admin.key")
contexts:
- name: textgen-local
  context:
    cluster: textgen-local
    user: textgen-admin
    namespace: default
current-context: textgen-local
EOF
  chmod 600 "$KUBECONFIG_OUT.tmp"
  mv "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
}

# ---------------------------------------------------------------- readiness probes

api_ready() {
  [ -f "$STATE/ports.env" ] || return 1
  # shellcheck disable=SC1091
  . "$STATE/ports.env"
  [ "$(curl -sS --max-time 3 --cacert "$PKI/ca.crt" "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = ok ]
}
etcd_ready() {
  curl -sS --max-time 3 --cacert "$PKI/etcd-ca.crt" --cert "$PKI/apiserver-etcd-client.crt" \
    --key "$PKI/apiserver-etcd-client.key" "https://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}
kcm_ready() { [ "$(curl -sSk --max-time 3 "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" = ok ]; }
kuberay_ready() { [ "$(curl -sS --max-time 3 "http://127.0.0.1:$KUBERAY_PROBE_PORT/readyz" 2>/dev/null)" = ok ]; }

all_running() {
  local c
  # Running in the other mode (with or without a node) counts as not running: `up` restarts it.
  [ "$(unset CLUSTER_NODE_IP; . "$STATE/ports.env" 2>/dev/null; echo "${CLUSTER_NODE_IP:-}")" = "$NODE_IP" ] || return 1
  for c in "${COMPONENTS[@]}"; do [ -n "$(pid_of "$c")" ] || return 1; done
  api_ready && kcm_ready && kuberay_ready
}

# ---------------------------------------------------------------- commands

stop_all() {
  local c pid
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c="${COMPONENTS[$i]}"
    pid="$(pid_of "$c")"
    [ -z "$pid" ] || stop_pid "$c" "$pid"
  done
}

cmd_down() {
  local c pid found=0 stoppers=()
  # All at once (each takes a second or two to shut down gracefully); the state goes anyway.
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c="${COMPONENTS[$i]}"
    pid="$(pid_of "$c")"
    if [ -n "$pid" ]; then stop_pid "$c" "$pid" & stoppers+=($!); found=1; fi
    for pid in $(orphans_of "$c"); do
      [ "$pid" != "$(cat "$PIDS/$c.pid" 2>/dev/null)" ] || continue
      log "stopping orphaned $c (pid $pid)"; stop_pid "$c" "$pid" & stoppers+=($!); found=1
    done
  done
  for pid in "${stoppers[@]}"; do wait "$pid" || true; done
  rm -rf "$STATE"
  [ "$found" = 1 ] && log "cluster down, state removed ($STATE)" || log "no cluster running; state removed ($STATE)"
}

print_usage() {
  . "$STATE/ports.env"
  cat <<EOF

Local control plane is up: Kubernetes $(cat "$ROOT/.cache/kuberay/kube-version" 2>/dev/null) at https://127.0.0.1:$API_PORT, KubeRay operator $(cat "$ROOT/.cache/kuberay/kuberay-version" 2>/dev/null) running.
  export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH
  kubectl get rayclusters,rayservices -A
  kubectl apply -f .cache/kuberay/samples/ray-service.sample.yaml   # pods stay Pending: no scheduler, no kubelet
Logs: $LOGS/   Stop: make cluster-down
EOF
}

cmd_up() {
  local t0; t0=$(date +%s)
  "$HERE/build.sh"
  for b in etcd kube-apiserver kube-controller-manager kuberay-operator kubectl; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing after build"
  done
  if all_running; then
    log "already running"
    print_usage
    return 0
  fi
  # Anything half-started or left over from an earlier run: stop it by PID and start clean.
  cmd_down
  mkdir -p "$STATE" "$PIDS" "$LOGS"
  # A failed start stops what it started, keeping $STATE (logs) for a look; the next `up` or `down` removes it.
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed: stopping what was started (logs kept in $LOGS)"; stop_all; fi' EXIT
  make_pki

  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT KUBERAY_METRICS_PORT KUBERAY_PROBE_PORT <<<"$(free_ports 6)"
  CLUSTER_NODE_IP="$NODE_IP"
  write_env "$STATE/ports.env" ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT KUBERAY_METRICS_PORT KUBERAY_PROBE_PORT \
    CLUSTER_NODE_IP
  write_kubeconfig "$API_PORT"

  start_component etcd \
    --name=textgen-local --data-dir="$STATE/etcd" \
    --listen-client-urls="https://127.0.0.1:$ETCD_PORT" --advertise-client-urls="https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="https://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="https://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="textgen-local=https://127.0.0.1:$ETCD_PEER_PORT" \
    --cert-file="$PKI/etcd-server.crt" --key-file="$PKI/etcd-server.key" \
    --client-cert-auth=true --trusted-ca-file="$PKI/etcd-ca.crt" \
    --peer-cert-file="$PKI/etcd-server.crt" --peer-key-file="$PKI/etcd-server.key" \
    --peer-client-cert-auth=true --peer-trusted-ca-file="$PKI/etcd-ca.crt" \
    --unsafe-no-fsync=true --quota-backend-bytes=1073741824 --log-level=warn
  wait_for etcd 30 etcd_ready || die "etcd did not become healthy"

  # OwnerReferencesPermissionEnforcement (on in OpenShift): setting blockOwnerDeletion on an owner reference needs
  # `update` on the owner's finalizers subresource, so a missing RBAC rule fails here as it would there.
  local admission=OwnerReferencesPermissionEnforcement
  local mode_args=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --authorization-mode=RBAC
                   --endpoint-reconciler-type=none --enable-admission-plugins="$admission")
  if [ -n "$NODE_IP" ]; then
    mode_args=(--bind-address=0.0.0.0 --advertise-address="$NODE_IP" --authorization-mode=Node,RBAC
               --endpoint-reconciler-type=lease --enable-admission-plugins="NodeRestriction,$admission"
               --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
               --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
               --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP)
  fi
  start_component kube-apiserver \
    --etcd-servers="https://127.0.0.1:$ETCD_PORT" --etcd-cafile="$PKI/etcd-ca.crt" \
    --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    "${mode_args[@]}" --secure-port="$API_PORT" \
    --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver 120 api_ready || die "kube-apiserver did not become ready"

  start_component kube-controller-manager \
    --kubeconfig="$KUBECONFIG_OUT" \
    --authentication-kubeconfig="$KUBECONFIG_OUT" --authorization-kubeconfig="$KUBECONFIG_OUT" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE/kcm-certs" \
    --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --profiling=false

  # KubeRay's CRDs: server-side apply (the RayService CRD is too large for the last-applied annotation).
  "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" apply --server-side --force-conflicts \
    -f "$ROOT/.cache/kuberay/crd/" >/dev/null
  KUBECONFIG="$KUBECONFIG_OUT" start_component kuberay-operator \
    --use-kubernetes-proxy \
    --metrics-addr="127.0.0.1:$KUBERAY_METRICS_PORT" \
    --health-probe-bind-address="127.0.0.1:$KUBERAY_PROBE_PORT" \
    --enable-leader-election=false \
    --log-stdout-encoder=console

  # The operator starts while the CRDs become Established (its informers wait for them).
  "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" wait --for condition=established --timeout=60s \
    crd/rayclusters.ray.io crd/rayjobs.ray.io crd/rayservices.ray.io >/dev/null
  wait_for kube-controller-manager 60 kcm_ready || die "kube-controller-manager did not become healthy"
  wait_for kuberay-operator 60 kuberay_ready || die "KubeRay operator did not become ready"
  trap - EXIT
  log "ready in $(( $(date +%s) - t0 )) s"
  print_usage
}

cmd_status() {
  local rc=0
  components_status "${COMPONENTS[@]}" || rc=1
  printf '  %-24s             RSS %6d MiB\n' "total" $(( COMPONENTS_RSS_KIB / 1024 ))
  if api_ready; then echo "  API server ready at https://127.0.0.1:$API_PORT  (KUBECONFIG=$KUBECONFIG_OUT)"
  else echo "  API server not ready"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) [ -f "$KUBECONFIG_OUT" ] && echo "export KUBECONFIG=$KUBECONFIG_OUT" || die "not up" ;;
  build) "$HERE/build.sh" "${@:2}" ;;
  *) echo "usage: $0 up|down|status|env|build" >&2; exit 2 ;;
esac
