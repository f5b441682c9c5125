# Process helpers of hack/node/node.sh (sourced): start in their own session, record PIDs, stop only the PIDs we
# recorded and only while /proc/PID/exe is still the binary we started (a recycled PID is never signalled).
PIDS="$NODE_STATE/pids"
LOGS="$NODE_STATE/logs"

pid_of() {
  local f="$PIDS/$1.pid" pid exe want
  [ -f "$f" ] || return 0
  pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  want="$(exe_of "$1")"
  [ "$exe" = "$want" ] || [ "$exe" = "$want (deleted)" ] && echo "$pid" || true
}


start_component() { # name args...
  local name="$1"; shift
  mkdir -p "$PIDS" "$LOGS"
  # setsid: its own session, so make's process group ending does not take it down; `down` stops it by PID.
  setsid "$(exe_of "$name")" "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

wait_for() { # name seconds cmd...: poll cmd; fail early when the process died
  local name="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs )) pid
  pid="$(cat "$PIDS/$name.pid")"
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
      log "$name not ready (exited or ${secs}s passed); last lines of $LOGS/$name.log:"
      tail -n 30 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}



# containerd's shims for our socket (one per pod), e.g. after containerd itself was stopped.
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/exe" 2>/dev/null)" in */containerd-shim-runc-v2*) ;; *) continue ;; esac
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$CONTAINERD_SOCK" && echo "${p#/proc/}"
  done
  return 0
}
shim_rss_kib() { local p t=0; for p in $(our_shims); do t=$(( t + $(rss_kib "$p") )); done; echo "$t"; }
stop_orphan_shims() { local p; for p in $(our_shims); do stop_pid containerd-shim "$p"; done; }

# Memory of each pod: RSS (memory.stat total_rss) of its cgroup under the kubelet's cgroup root.
pods_memory() {
  local ns name uid dir rss
  . "$NODE_STATE/ports.env"
  kc get pods -A --field-selector "spec.nodeName=$NODE_NAME" \
     -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name} {.metadata.uid}{"\n"}{end}' 2>/dev/null |
  while read -r ns name uid; do
    [ -n "$uid" ] || continue
    dir="$(find "/sys/fs/cgroup/memory$CGROUP_ROOT" -maxdepth 3 -type d -name "pod$uid" 2>/dev/null | head -n1)"
    rss="$(awk '$1 == "total_rss" {print int($2 / 1048576)}' "$dir/memory.stat" 2>/dev/null || echo '?')"
    printf '  pod %-52s RSS %6s MiB\n' "$ns/$name" "$rss"
  done
}
