#!/usr/bin/env bash
# Debian packages the node and the local image builds need; installs only what is missing (CI starts fresh, as root).
set -euo pipefail
LOG_TAG=node-deps
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PACKAGES=(containerd runc containernetworking-plugins buildah debootstrap nftables iptables gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0
[ "$(id -u)" = 0 ] || die "missing Debian packages (${missing[*]}): run as root, or apt-get install them"
log "apt-get install ${missing[*]} ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed ${missing[*]}"
