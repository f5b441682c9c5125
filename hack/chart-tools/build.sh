#!/usr/bin/env bash
# Build the chart's Go tools once per machine (this folder's go.mod pins them) and install them into the checkout:
#   helm-unittest  github.com/helm-unittest/helm-unittest/cmd/helm-unittest, as the Helm plugin "unittest": its own
#                  plugin.yaml (copied from the very module version the binary is built from) plus the binary under
#                  the name plugin.yaml gives it, in .cache/helm-plugins/unittest (HELM_PLUGINS=.cache/helm-plugins)
#   helm-docs      github.com/norwoodj/helm-docs/cmd/helm-docs, into .cache/bin
# Cached in $TEXTGEN_CACHE/chart-tools/<key> (key: go.mod, go.sum, the build recipe) and built with Go's module and
# build caches, as hack/sim does; a second checkout on the machine only copies the binaries.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../lib.sh"
PLUGINS="${HELM_PLUGINS_DIR:-$ROOT/.cache/helm-plugins}"
log() { printf '[chart-tools] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "Go is needed to build helm-unittest and helm-docs (go 1.26+)"; exit 1; }
UNITTEST_VERSION="$(awk '$1 == "github.com/helm-unittest/helm-unittest" {print $2; exit}' "$HERE/go.mod")"
DOCS_VERSION="$(awk '$1 == "github.com/norwoodj/helm-docs" {print $2; exit}' "$HERE/go.mod")"
RECIPE="1 CGO_ENABLED=$CGO_ENABLED -trimpath -s -w $(go env GOVERSION GOOS GOARCH | tr '\n' ' ')"
STORE="$CACHE_ROOT/chart-tools/$(go_build_key "$HERE" "$RECIPE")"
# plugin.yaml names the binary per platform: untt-<os>-<arch>, with "macos" for darwin.
GOOS="$(go env GOOS)"; GOARCH="$(go env GOARCH)"
UNTT="untt-${GOOS/darwin/macos}-$GOARCH"

if [ ! -x "$STORE/helm-unittest" ] || [ ! -x "$STORE/helm-docs" ] || [ ! -f "$STORE/plugin.yaml" ]; then
  mkdir -p "$STORE"
  exec 9>"$STORE/.lock"
  flock 9   # another checkout building the same key: wait, then find the binaries
  if [ ! -x "$STORE/helm-unittest" ] || [ ! -x "$STORE/helm-docs" ] || [ ! -f "$STORE/plugin.yaml" ]; then
    rm -rf "$STORE/.tmp" && mkdir -p "$STORE/.tmp"
    t0=$(date +%s)
    log "building helm-unittest $UNITTEST_VERSION and helm-docs $DOCS_VERSION ..."
    (cd "$HERE" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$STORE/.tmp/" \
      github.com/helm-unittest/helm-unittest/cmd/helm-unittest github.com/norwoodj/helm-docs/cmd/helm-docs)
    log "built in $(( $(date +%s) - t0 )) s"
    echo "helm-unittest+helm-docs $(( $(date +%s) - t0 ))" > "$STORE/.tmp/build-seconds.txt"
    dir="$(cd "$HERE" && go list -m -f '{{.Dir}}' github.com/helm-unittest/helm-unittest)"
    # The install/update hooks download release binaries; the plugin is installed by copying, so they never run.
    cp "$dir/plugin.yaml" "$STORE/.tmp/plugin.yaml" && chmod u+w "$STORE/.tmp/plugin.yaml"
    for f in "$STORE/.tmp"/*; do mv -f "$f" "$STORE/"; done
    rmdir "$STORE/.tmp"
  fi
  exec 9>&-
fi

install_copy() {  # copy only when changed, atomically (a running test may be reading the old one)
  if ! cmp -s "$1" "$2"; then cp "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; fi
}
mkdir -p "$BIN" "$PLUGINS/unittest"
install_copy "$STORE/helm-docs" "$BIN/helm-docs"
install_copy "$STORE/plugin.yaml" "$PLUGINS/unittest/plugin.yaml"
install_copy "$STORE/helm-unittest" "$PLUGINS/unittest/$UNTT"
log "ready: $BIN/helm-docs ($DOCS_VERSION), $PLUGINS/unittest ($UNITTEST_VERSION; HELM_PLUGINS=$PLUGINS helm unittest)"
