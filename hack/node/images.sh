#!/usr/bin/env bash
# Build the node's container images without a Docker daemon or registry, and import them into the node's
# containerd (namespace k8s.io):
#   base      a Debian bookworm rootfs from Debian packages (debootstrap): python3.11 in a venv at /usr/local
#             (so `python`, `pip` and pip-installed scripts such as `ray` are on every PATH, even a login
#             shell's), bash, wget (KubeRay's probes), procps; user `ray` (1000:100) as in rayproject/ray.
#             It stands in for both public bases (python:3.11-slim, rayproject/ray) on machines without Docker Hub.
#   pause     Kubernetes' own build/pause/linux/pause.c (from the k8s.io/kubernetes module), built static.
#   operator  images/operator/Dockerfile, FROM the base (PYTHON_IMAGE build arg).
#   serve     images/serve/Dockerfile, FROM the base (RAY_IMAGE), weights from a local model directory
#             (WEIGHTS_STAGE=weights-local + build context local-model=$LOCAL_MODEL_DIR) instead of the Hub, and
#             Python wheels only from a machine-wide wheelhouse filled by `pip download` from pip's index (PyPI).
# The Dockerfiles are the users' own: only build args differ. Each image's tag is a hash of its inputs, so an
# image already in containerd is reused (the cache) and a changed input builds a new one.
#
#   hack/node/images.sh            # build what is missing, import, write .node/images.env (SERVE_IMAGE=...)
#   hack/node/images.sh --print    # only print the image names the current inputs give
set -euo pipefail
LOG_TAG=images
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEBIAN_SUITE=bookworm            # python3.11: the project's Python, and the wheels' cp311 tag
BASE_PACKAGES=python3,python3-venv,python-is-python3,bash,wget,ca-certificates,procps
LOCAL_MODEL_DIR="${LOCAL_MODEL_DIR:-$ROOT/.models/gpt2-random-init}"
WHEELHOUSE="$NODE_CACHE/wheelhouse"
BUILD_LOG_DIR="$NODE_STATE/logs"
RECIPE=1                         # bump when the way images are built changes
# A new serve image takes about 20 GB while it is built and imported (its pip layer, the layer's commit, containerd's
# copy and snapshot): below this much free space, older tags of the same image and buildah's dangling layers go first.
MIN_FREE_GB="${MIN_FREE_GB:-30}"
export STORAGE_DRIVER=overlay BUILDAH_ISOLATION=chroot

hash_of() { sha256sum | cut -c1-12; }
# Files of the build context an image uses (git-tracked or not, minus caches and the metadata editable installs write
# into operator/ and contract/; the dockerignore leaves the same out): its part of the key.
tree_hash() { (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | sort -z \
  | xargs -0 sha256sum) | hash_of; }

BASE_KEY="$(echo "$RECIPE $DEBIAN_SUITE $BASE_PACKAGES $(sed -n '/^build_base()/,/^}/p' "$0" | sha256sum)" | hash_of)"
BASE_IMAGE="localhost/textgen-local/debian-python:3.11-$DEBIAN_SUITE-$BASE_KEY"
PAUSE_C="$(go env GOMODCACHE)/k8s.io/kubernetes@$(kube_version)/build/pause/linux/pause.c"
PAUSE_KEY="$( { echo "$RECIPE"; cat "$PAUSE_C" 2>/dev/null; } | hash_of)"
PAUSE_IMAGE="localhost/textgen-local/pause:3.10-$PAUSE_KEY"
OPERATOR_KEY="$( { echo "$BASE_KEY"; tree_hash images/operator constraints.txt contract operator; } | hash_of)"
SERVE_KEY="$( { echo "$BASE_KEY"; tree_hash images/serve pyproject.toml constraints.txt serve_app contract; (cd "$LOCAL_MODEL_DIR" && cat textgen.json config.json); } | hash_of)"
OPERATOR_IMAGE="localhost/textgen-operator:local-$OPERATOR_KEY"
SERVE_IMAGE="localhost/textgen-serve:local-$SERVE_KEY"

have_buildah_image() { buildah images --quiet "$1" >/dev/null 2>&1; }
have_ctr_image() { [ -S "$CONTAINERD_SOCK" ] && ctr_ images ls -q "name==$1" 2>/dev/null | grep -qx "$1"; }

# Debian's mirror as apt on this machine knows it (no host name written here).
debian_mirror() {
  { awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null
    awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null; } | head -n1
}

build_base() {
  local rootfs="$NODE_CACHE/rootfs-$BASE_KEY" c mnt
  if [ ! -x "$rootfs/usr/local/bin/python" ]; then
    rm -rf "$rootfs.tmp"
    log "debootstrap $DEBIAN_SUITE ($BASE_PACKAGES) ..."
    nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$rootfs.tmp" \
      "$(debian_mirror)" > "$BUILD_LOG_DIR/debootstrap.log" 2>&1 || { tail -20 "$BUILD_LOG_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
    # A venv at /usr/local: pip installs into it (not into Debian's python), and its bin/ is on every PATH.
    chroot "$rootfs.tmp" python3 -m venv /usr/local
    chroot "$rootfs.tmp" useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
    rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/* "$rootfs.tmp"/var/log/*
    mv "$rootfs.tmp" "$rootfs"
  fi
  c="$(buildah from --pull-never scratch)"
  mnt="$(buildah mount "$c")"
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xf -
  buildah umount "$c" >/dev/null
  buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label "textgen.dev/built-from=debootstrap $DEBIAN_SUITE" "$c"
  buildah commit --rm --quiet "$c" "$BASE_IMAGE" >/dev/null
  log "base image $BASE_IMAGE ($(du -sh "$rootfs" | cut -f1) rootfs)"
}

build_pause() {
  local src="$PAUSE_C" dir c
  [ -f "$src" ] || die "$src missing: run 'make cluster-build' (it downloads the k8s.io/kubernetes module)"
  dir="$(mktemp -d)"
  gcc -Os -static -Wall -Werror -DVERSION="v3.10-textgen" -o "$dir/pause" "$src"
  strip "$dir/pause"
  c="$(buildah from --pull-never scratch)"
  buildah copy --quiet "$c" "$dir/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  buildah commit --rm --quiet "$c" "$PAUSE_IMAGE" >/dev/null
  rm -rf "$dir"
  log "pause image $PAUSE_IMAGE"
}

# The serve image's requirements: the root pyproject.toml's dependencies (textgen-serve's) but textgen-contract, which
# the image copies as source (what its Dockerfile installs), one per line.
serve_requirements() {
  "$PY" -c "import tomllib; p = tomllib.load(open('$ROOT/pyproject.toml', 'rb'))['project']; \
print('\n'.join(d for d in p['dependencies'] if not d.startswith('textgen-contract')))"
}

fill_wheelhouse() {
  # The serve image's Python packages, downloaded once per machine through pip's own index (PyPI), at the
  # versions of constraints.txt (as the Dockerfile installs them), so the image build finds every wheel here.
  local reqs stamp
  reqs="$(mktemp)"
  serve_requirements > "$reqs"
  stamp="$WHEELHOUSE/.done-$(cat "$reqs" "$ROOT/constraints.txt" | hash_of)"
  if [ -f "$stamp" ]; then rm -f "$reqs"; return 0; fi
  mkdir -p "$WHEELHOUSE"
  log "pip download into $WHEELHOUSE ($(tr '\n' ' ' < "$reqs")with constraints.txt) ..."
  "$PY" -m pip download --quiet --dest "$WHEELHOUSE" -c "$ROOT/constraints.txt" -r "$reqs"
  rm -f "$reqs"
  touch "$stamp"
}

# bud IMAGE DOCKERFILE ARGS...: a daemonless build of one of the project's Dockerfiles from the repository root.
bud() {
  local image="$1" dockerfile="$2"; shift 2
  local name; name="$(basename "$(dirname "$dockerfile")")"
  log "buildah bud $dockerfile -> $image (log $BUILD_LOG_DIR/build-$name.log) ..."
  # RUN steps see the host's pip configuration and CA bundle (a machine behind a TLS proxy needs both to reach
  # PyPI); mounted, so nothing of them lands in the image.
  local host=()
  [ -f /etc/pip.conf ] && host+=(--volume /etc/pip.conf:/etc/pip.conf:ro)
  [ -f /etc/ssl/certs/ca-certificates.crt ] && host+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  (cd "$ROOT" && nice -n 10 buildah bud --isolation chroot --pull-never --layers --force-rm --format docker \
      "${host[@]}" -f "$dockerfile" -t "$image" "$@" . ) > "$BUILD_LOG_DIR/build-$name.log" 2>&1 \
    || { tail -40 "$BUILD_LOG_DIR/build-$name.log" >&2; die "building $image failed"; }
}

build_operator() {
  bud "$OPERATOR_IMAGE" images/operator/Dockerfile --build-arg "PYTHON_IMAGE=$BASE_IMAGE"
}

build_serve() {
  [ -f "$LOCAL_MODEL_DIR/config.json" ] || die "$LOCAL_MODEL_DIR has no model: run 'make model'"
  fill_wheelhouse
  # The default .dockerignore leaves .models out; the model comes in as its own named context instead.
  bud "$SERVE_IMAGE" images/serve/Dockerfile \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "RAY_IMAGE=$BASE_IMAGE" \
    --build-arg WEIGHTS_STAGE=weights-local --build-context "local-model=$LOCAL_MODEL_DIR" \
    --build-arg "LOCAL_MODEL_NAME=$(basename "$LOCAL_MODEL_DIR")" \
    --build-arg TORCH_INDEX_ARGS= \
    --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_NO_INDEX=1 --volume "$WHEELHOUSE:/wheels:ro"
}

# import IMAGE: buildah's image -> containerd (docker-archive streamed through a pipe, no file on disk).
import_image() {
  local image="$1" t0; t0=$(date +%s)
  buildah push --quiet "$image" "docker-archive:/dev/stdout:$image" | ctr_ images import --snapshotter overlayfs - >/dev/null
  log "imported $image into containerd in $(( $(date +%s) - t0 )) s"
}

free_gb() { df --output=avail -BG "$NODE_CACHE" /var/lib/containers 2>/dev/null | tail -n +2 | tr -dc '0-9\n' | sort -n | head -n1; }

# make_room REPOSITORY IMAGE: before building IMAGE, when the disk is short, remove the older tags of its repository
# (buildah and containerd) and buildah's dangling layers (the layer cache of earlier builds).
make_room() {
  local free; free="$(free_gb)"
  [ "${free:-0}" -ge "$MIN_FREE_GB" ] && return 0
  log "only ${free} GB free (< $MIN_FREE_GB): removing older $1 images and buildah's dangling layers first"
  prune_old "$1" "$2"
  buildah rmi --prune >/dev/null 2>&1 || true
  log "now $(free_gb) GB free"
}

ensure() { # name image builder
  local name="$1" image="$2" builder="$3" t0; t0=$(date +%s)
  if have_ctr_image "$image"; then log "$name: $image (cached)"; return 0; fi
  have_buildah_image "$image" || { make_room "${image%:*}" "$image"; "$builder"; }
  [ -S "$CONTAINERD_SOCK" ] || { log "$name: built $image; containerd is not running, import skipped"; return 0; }
  import_image "$image"
  echo "$name $(( $(date +%s) - t0 ))" >> "$BUILD_LOG_DIR/image-seconds.txt"
}

# Older tags of our images (earlier inputs): removed from buildah and containerd so that disk use stays flat.
# buildah's untagged intermediate images stay: they are its layer cache (`buildah rmi --prune` drops them).
prune_old() { # repository current-image
  local ref
  for ref in $(buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep "^$1:" || true); do
    [ "$ref" = "$2" ] || buildah rmi "$ref" >/dev/null 2>&1 || true
  done
  [ -S "$CONTAINERD_SOCK" ] || return 0
  for ref in $(ctr_ images ls -q 2>/dev/null | grep "^$1:" || true); do
    [ "$ref" = "$2" ] || ctr_ images rm "$ref" >/dev/null 2>&1 || true
  done
}

# The CRI also names every image it sees by its ID (sha256:...); those aliases outlive the tag prune_old removes and
# pin every old image's layers (33 GB of old serve images were found this way). Keep only aliases of tagged images.
prune_untagged() {
  [ -S "$CONTAINERD_SOCK" ] || return 0
  local keep ref
  keep="$(ctr_ images ls 2>/dev/null | awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}')"
  for ref in $(ctr_ images ls 2>/dev/null | awk 'NR > 1 && $1 ~ /^sha256:/ {print $1 "=" $3}'); do
    grep -qxF "${ref#*=}" <<<"$keep" || ctr_ images rm "${ref%%=*}" >/dev/null 2>&1 || true
  done
}

main() {
  if [ "${1:-}" = --print ]; then
    printf 'PAUSE_IMAGE=%s\nOPERATOR_IMAGE=%s\nSERVE_IMAGE=%s\n' "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$SERVE_IMAGE"
    return 0
  fi
  mkdir -p "$BUILD_LOG_DIR" "$NODE_CACHE"
  exec 8>"$NODE_CACHE/images.lock"
  flock 8   # two checkouts building at once: the second waits, then finds the images
  # Working containers a failed build left behind (several GB each): no build runs while we hold the lock.
  buildah rm --all >/dev/null 2>&1 || true
  have_buildah_image "$BASE_IMAGE" || build_base
  [ "${1:-}" = base ] && return 0
  ensure pause "$PAUSE_IMAGE" build_pause
  ensure operator "$OPERATOR_IMAGE" build_operator
  ensure serve "$SERVE_IMAGE" build_serve
  prune_old localhost/textgen-local/pause "$PAUSE_IMAGE"
  prune_old localhost/textgen-operator "$OPERATOR_IMAGE"
  prune_old localhost/textgen-serve "$SERVE_IMAGE"
  prune_untagged
  printf 'PAUSE_IMAGE=%s\nOPERATOR_IMAGE=%s\nSERVE_IMAGE=%s\n' "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$SERVE_IMAGE" \
    > "$NODE_STATE/images.env"
  local img
  for img in "$OPERATOR_IMAGE" "$SERVE_IMAGE"; do
    log "$(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$img" 2>/dev/null | head -n1)"
  done
}

main "$@"
