#!/usr/bin/env bash
# Stops what deploy/local/up.sh started: the workers first (SIGTERM: they deregister and finish
# what they hold), then the router; whatever has not exited 15 s after its SIGTERM gets SIGKILL.
# Removes the pid files; keeps the logs.
#
#   deploy/local/down.sh
# Environment: TANDEM_BUILD_DIR (build/), TANDEM_RUN_DIR (build/run/), as for up.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${TANDEM_BUILD_DIR:-$root/build}
run_dir=${TANDEM_RUN_DIR:-$build/run}
pids=$run_dir/pids
grace_s=15

# live_pid NAME: prints NAME's pid when it is a live tandem process (not a reused pid).
live_pid() {
  local pid
  pid=$(cat "$pids/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tandem-' && echo "$pid"
}

# stop NAME...: SIGTERM to each, wait up to grace_s for all, SIGKILL the rest.
stopped=0
stop() {
  local name pid live=()
  for name in "$@"; do
    if pid=$(live_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      live+=("$name")
    fi
  done
  ((${#live[@]})) || return 0
  stopped=$((stopped + ${#live[@]}))
  local deadline=$((SECONDS + grace_s)) left
  while :; do
    left=()
    for name in "${live[@]}"; do
      live_pid "$name" >/dev/null && left+=("$name")
    done
    ((${#left[@]})) || return 0
    ((SECONDS < deadline)) || break
    sleep 0.2
  done
  for name in "${left[@]}"; do
    if pid=$(live_pid "$name"); then
      echo "down.sh: $name (pid $pid) still running ${grace_s}s after SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

workers=()
for f in "$pids"/prefill-*.pid "$pids"/decode-*.pid; do
  [[ -e $f ]] || continue
  name=${f##*/}
  workers+=("${name%.pid}")
done
((${#workers[@]} == 0)) || stop "${workers[@]}"
stop router
rm -f "$pids"/*.pid "$run_dir/router_address"
if ((stopped)); then
  echo "tandem stopped ($stopped processes; logs kept in $run_dir/logs/)"
else
  echo "tandem is not running"
fi
