# Shared by the hack/ scripts (sourced after `set -euo pipefail`): repository paths, the Python to use, Go build
# settings and cache keys, and process/port helpers. The sourcing script defines `log` before calling stop_pid.
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
BIN="${BIN:-$ROOT/.cache/bin}"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# Machine-wide build caches (a clean clone reuses them); per-checkout state stays in the checkout.
CACHE_ROOT="${TEXTGEN_CACHE:-$HOME/.cache/textgen-operator}"
# Static binaries with the machine's own Go (no toolchain download), reproducible across checkouts.
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0

# go_build_key DIR RECIPE: a cache key for what DIR's go.mod/go.sum build with RECIPE (flags, Go version).
go_build_key() { { echo "$2"; cat "$1/go.mod" "$1/go.sum"; } | sha256sum | cut -c1-12; }

# stop_pid NAME PID [GRACE_S]: SIGTERM, then SIGKILL after GRACE_S seconds (default $STOP_GRACE_S or 5).
stop_pid() {
  local name="$1" pid="$2" grace="${3:-${STOP_GRACE_S:-5}}" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 $((grace * 10))); do
    kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) ignored SIGTERM for $grace s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

# free_ports N: N distinct free loopback TCP ports, space-separated.
free_ports() {
  "$PY" -c 'import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1", 0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

# write_env FILE VAR...: VAR=value lines, read back later with `source FILE`.
write_env() {
  local file="$1" v; shift
  for v in "$@"; do printf '%s=%s\n' "$v" "${!v}"; done > "$file"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# components_status NAME...: a line per component (pid and RSS, or "not running", found by the sourcing script's
# pid_of); COMPONENTS_RSS_KIB gets their total; returns 1 when one is not running.
components_status() {
  local c pid rss rc=0
  COMPONENTS_RSS_KIB=0
  for c in "$@"; do
    pid="$(pid_of "$c")"
    if [ -n "$pid" ]; then
      rss="$(rss_kib "$pid")"; COMPONENTS_RSS_KIB=$(( COMPONENTS_RSS_KIB + rss ))
      printf '  %-24s pid %-8s RSS %6d MiB\n' "$c" "$pid" $(( rss / 1024 ))
    else
      printf '  %-24s not running\n' "$c"; rc=1
    fi
  done
  return $rc
}
