#!/usr/bin/env bash
# Build what `make sim-scale` needs beside the local control plane, once per machine, and copy it into .cache/:
#   kwok            sigs.k8s.io/kwok/cmd/kwok (this folder's go.mod: its own k8s.io versions), into .cache/bin
#   kwok-stages     kwok's own "fast" node and pod Stages plus node-heartbeat-with-lease, copied out of the very
#                   module version the binary is built from, into .cache/sim/kwok-stages.yaml
#   kube-scheduler  not built here: hack/node/build.sh builds it from the API server's k8s.io/kubernetes module
# Cached in $TEXTGEN_CACHE/sim/kwok-<version>-<key> (key: go.mod, go.sum, the build recipe), as hack/cluster does.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../lib.sh"
OUT="$ROOT/.cache/sim"
log() { printf '[sim-build] %s\n' "$*" >&2; }

KWOK_VERSION="$(awk '$1 == "sigs.k8s.io/kwok" {print $2; exit}' "$HERE/go.mod")"
RECIPE="1 CGO_ENABLED=$CGO_ENABLED -trimpath -s -w $(go env GOVERSION 2>/dev/null || echo nogo)"
STORE="$CACHE_ROOT/sim/kwok-$KWOK_VERSION-$(go_build_key "$HERE" "$RECIPE")"
# The Stages kwok plays: nodes become Ready (and keep their Lease), pods become Running/Ready, deleted pods go.
STAGES=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)

# kube-scheduler: the node's build (same module and version stamp as the API server), cached there.
PY="${PY:-$ROOT/.venv/bin/python}" BIN="$BIN" "$ROOT/hack/node/build.sh"

if [ ! -x "$STORE/kwok" ] || [ ! -f "$STORE/kwok-stages.yaml" ]; then
  command -v go >/dev/null || { log "Go is needed to build kwok (go 1.26+)"; exit 1; }
  mkdir -p "$STORE"
  exec 9>"$STORE/.lock"
  flock 9   # another checkout building the same key: wait, then find the binary
  if [ ! -x "$STORE/kwok" ] || [ ! -f "$STORE/kwok-stages.yaml" ]; then
    rm -rf "$STORE/.tmp" && mkdir -p "$STORE/.tmp"
    t0=$(date +%s)
    log "building kwok $KWOK_VERSION ..."
    (cd "$HERE" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$STORE/.tmp/kwok" sigs.k8s.io/kwok/cmd/kwok)
    log "built kwok in $(( $(date +%s) - t0 )) s"
    echo "kwok $(( $(date +%s) - t0 ))" > "$STORE/.tmp/build-seconds.txt"
    dir="$(cd "$HERE" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    for s in "${STAGES[@]}"; do echo "---"; cat "$dir/kustomize/stage/$s"; done > "$STORE/.tmp/kwok-stages.yaml"
    for f in "$STORE/.tmp"/*; do mv -f "$f" "$STORE/"; done
    rmdir "$STORE/.tmp"
  fi
  exec 9>&-
fi

mkdir -p "$BIN" "$OUT"
if ! cmp -s "$STORE/kwok" "$BIN/kwok"; then cp "$STORE/kwok" "$BIN/kwok.tmp.$$" && mv -f "$BIN/kwok.tmp.$$" "$BIN/kwok"; fi
cp "$STORE/kwok-stages.yaml" "$OUT/kwok-stages.yaml"
log "ready: $BIN/kwok ($KWOK_VERSION), $BIN/kube-scheduler, $OUT/kwok-stages.yaml"
