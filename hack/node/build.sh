#!/usr/bin/env bash
# Build the node's binaries once per machine and copy them into .cache/bin:
#   kube-scheduler, kubelet, kube-proxy   from hack/cluster/kube: the same k8s.io/kubernetes module, version and
#                                         version stamp as the API server (hack/cluster/build.sh)
#   coredns                               from hack/node/coredns: CoreDNS with the kubernetes plugin, no forward
# Cached in $TEXTGEN_CACHE/node/bin-<key> (key: the module files and the build recipe), like the control plane.
set -euo pipefail
LOG_TAG=node-build
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
KUBE_DIR="$ROOT/hack/cluster/kube"
DNS_DIR="$ROOT/hack/node/coredns"

KUBE_VERSION="$(kube_version)"
V=k8s.io/component-base/version
KUBE_LDFLAGS="-s -w -X $V.gitVersion=$KUBE_VERSION -X $V.gitMajor=1 -X $V.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
KUBE_LDFLAGS+=" -X $V.gitCommit=0000000000000000000000000000000000000000 -X $V.gitTreeState=clean"
KUBE_LDFLAGS+=" -X $V.buildDate=1970-01-01T00:00:00Z"
RECIPE="1 CGO_ENABLED=$CGO_ENABLED -trimpath $KUBE_LDFLAGS $(go env GOVERSION 2>/dev/null || echo nogo)"
KEY="$( { echo "$RECIPE"; cat "$KUBE_DIR/go.mod" "$KUBE_DIR/go.sum" "$DNS_DIR/go.mod" "$DNS_DIR/go.sum" "$DNS_DIR/main.go"; } \
  | sha256sum | cut -c1-12)"
STORE="$NODE_CACHE/bin-$KUBE_VERSION-$KEY"
BINARIES=(kube-scheduler kubelet kube-proxy coredns)

build_one() { # name dir package ldflags
  local t0; t0=$(date +%s)
  log "building $1 ($3) ..."
  (cd "$2" && nice -n 10 go build -trimpath -ldflags "$4" -o "$STORE/.tmp/$1" "$3")
  log "built $1 in $(( $(date +%s) - t0 )) s"
  echo "$1 $(( $(date +%s) - t0 ))" >> "$STORE/.tmp/build-seconds.txt"
}

missing() { local b; for b in "${BINARIES[@]}"; do [ -x "$STORE/$b" ] || return 0; done; return 1; }

if missing; then
  command -v go >/dev/null || die "Go is needed to build the node (go 1.26+)"
  mkdir -p "$STORE"
  exec 9>"$STORE/.lock"
  flock 9   # another checkout building the same key: wait, then find the binaries
  if missing; then
    rm -rf "$STORE/.tmp" && mkdir -p "$STORE/.tmp"
    build_one kube-scheduler "$KUBE_DIR" k8s.io/kubernetes/cmd/kube-scheduler "$KUBE_LDFLAGS"
    build_one kube-proxy "$KUBE_DIR" k8s.io/kubernetes/cmd/kube-proxy "$KUBE_LDFLAGS"
    build_one kubelet "$KUBE_DIR" k8s.io/kubernetes/cmd/kubelet "$KUBE_LDFLAGS"
    build_one coredns "$DNS_DIR" . "-s -w"
    for f in "$STORE/.tmp"/*; do mv -f "$f" "$STORE/"; done
    rmdir "$STORE/.tmp"
  fi
  exec 9>&-
fi

mkdir -p "$BIN"
for b in "${BINARIES[@]}"; do
  if ! cmp -s "$STORE/$b" "$BIN/$b"; then cp "$STORE/$b" "$BIN/$b.tmp.$$" && mv -f "$BIN/$b.tmp.$$" "$BIN/$b"; fi
done
log "ready: $BIN/{${BINARIES[*]// /,}} (Kubernetes $KUBE_VERSION)"
