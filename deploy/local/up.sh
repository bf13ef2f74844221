#!/usr/bin/env bash
# Runs tandem on this machine: one router, N prefill workers and M decode workers, each in the
# background with its own log. From a fresh machine it first installs what is missing
# (deploy/install_deps.sh), builds (the same build/ as tests/run.sh) and pulls the default model.
# Waits until every worker has registered with the router, then prints how to call it.
# Stop everything with deploy/local/down.sh.
#
#   deploy/local/up.sh                         # 1 prefill + 1 decode, router on 127.0.0.1:50051
#   deploy/local/up.sh --prefill 2 --decode 2 --mode disaggregated
#   deploy/local/up.sh --no-build --restart    # restart what runs, with the binaries as they are
#
# Flags: --prefill N (1), --decode M (1), --mode disaggregated|collocated|auto (the router's
# default), --port PORT (50051), --threads-per-worker T (cores / workers, at least 1),
# --model default|PATH (default; a GGUF or a Hugging Face directory), --no-build, --restart,
# --metrics-base-port PORT (9101), --device cpu|cuda|cuda:N (every worker's; cpu),
# --kv-transport tcp|cuda_ipc|nccl (the prefill workers'; tcp).
#   deploy/local/up.sh --device cuda --kv-transport cuda_ipc   # both pools on the one GPU
# Prometheus metrics: each worker serves GET /metrics on its own port, prefill-i on
# PORT+i, decode-j on PORT+prefill+j (9101, 9102, ... by default; 0: any free port, each
# printed in its log). The router's /metrics is on its HTTP port (8000).
# deploy/prometheus/prometheus.yml scrapes these defaults.
# Environment: TANDEM_BUILD_DIR (build/), TANDEM_RUN_DIR (build/run/: logs/, pids/),
# TANDEM_JOBS (build jobs; every core), TANDEM_UP_TIMEOUT (seconds to wait for the workers; 120).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${TANDEM_BUILD_DIR:-$root/build}
run_dir=${TANDEM_RUN_DIR:-$build/run}
logs=$run_dir/logs
pids=$run_dir/pids
bin=$build/bin
jobs=${TANDEM_JOBS:-$(nproc)}
up_timeout=${TANDEM_UP_TIMEOUT:-120}

prefill=1
decode=1
mode=
port=50051
threads=
model=default
metrics_base=9101
device=cpu
kv_transport=tcp
do_build=1
restart=0

die() {
  echo "up.sh: $*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --prefill) prefill=${2:?--prefill needs a value}; shift 2 ;;
    --decode) decode=${2:?--decode needs a value}; shift 2 ;;
    --mode) mode=${2:?--mode needs a value}; shift 2 ;;
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --threads-per-worker) threads=${2:?--threads-per-worker needs a value}; shift 2 ;;
    --model) model=${2:?--model needs a value}; shift 2 ;;
    --metrics-base-port) metrics_base=${2:?--metrics-base-port needs a value}; shift 2 ;;
    --device) device=${2:?--device needs a value}; shift 2 ;;
    --kv-transport) kv_transport=${2:?--kv-transport needs a value}; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --restart) restart=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "up.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done

# in_range VALUE MIN MAX: VALUE is an integer in [MIN, MAX].
in_range() { [[ $1 =~ ^[0-9]{1,9}$ ]] && (($1 >= $2 && $1 <= $3)); }
in_range "$prefill" 0 256 || die "--prefill: '$prefill' is not a count"
in_range "$decode" 1 256 || die "--decode: '$decode' must be at least 1"
in_range "$port" 1 65535 || die "--port: '$port' is not a port"
in_range "$metrics_base" 0 65000 || die "--metrics-base-port: '$metrics_base' is not a port"
case $mode in
  ''|disaggregated|collocated|auto) ;;
  *) die "--mode: '$mode' is not disaggregated, collocated or auto" ;;
esac
if [[ $mode == disaggregated ]] && ((prefill == 0)); then
  die "--mode disaggregated needs at least one prefill worker"
fi
workers=$((prefill + decode))
if [[ -z $threads ]]; then
  threads=$(($(nproc) / workers))
  ((threads >= 1)) || threads=1
fi
in_range "$threads" 1 1024 || die "--threads-per-worker: '$threads' must be at least 1"

# running NAME: true when NAME's pid file names a live tandem process (not a reused pid).
running() {
  local pid_file=$pids/$1.pid pid
  [[ -f $pid_file ]] || return 1
  pid=$(<"$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tandem-'
}
running_names() {
  local f
  for f in "$pids"/*.pid; do
    [[ -e $f ]] || continue
    f=${f##*/}
    running "${f%.pid}" && echo "${f%.pid}"
  done
  return 0
}

if [[ -n $(running_names) ]]; then
  if ((restart)); then
    "$root/deploy/local/down.sh"
  else
    address=$(cat "$run_dir/router_address" 2>/dev/null || echo "?")
    echo "tandem is already running: router $address ($(running_names | wc -l) processes;" \
      "logs in $logs). deploy/local/down.sh stops it; --restart restarts it."
    exit 0
  fi
fi

mkdir -p "$logs" "$pids"
rm -f "$pids"/*.pid

# step NAME COMMAND...: runs quietly into logs/NAME.log; on failure prints its tail and exits.
step() {
  local name=$1; shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    echo "up.sh: step '$name' failed; the end of its log ($logs/$name.log):" >&2
    tail -n 60 "$logs/$name.log" >&2
    exit 1
  fi
}

if ((do_build)); then
  "$root/deploy/install_deps.sh"
  echo "up.sh: building tandem in $build (log: $logs/build.log)" >&2
  # The same configuration as tests/run.sh, so both reuse one build directory.
  step configure cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  step build cmake --build "$build" -j "$jobs" \
    --target tandem tandem-router tandem-prefill tandem-decode
fi
for b in tandem tandem-router tandem-prefill tandem-decode; do
  [[ -x $bin/$b ]] || die "$bin/$b is missing; run without --no-build"
done
if [[ $model == default ]]; then
  step model-pull "$bin/tandem" model pull
elif [[ ! -f $model && ! -f $model/config.json ]]; then
  die "--model: no GGUF file or Hugging Face directory (with config.json) at $model"
fi

# Nothing else may hold the router's port: the workers would register with it instead.
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  die "port $port is already in use (another router?); pick another with --port"
fi
address=127.0.0.1:$port
echo "$address" >"$run_dir/router_address"

# start NAME COMMAND...: in the background, in its own session (a Ctrl-C in this terminal
# does not reach it), stderr and stdout into logs/NAME.log, its pid into pids/NAME.pid.
start() {
  local name=$1; shift
  setsid "$@" </dev/null >"$logs/$name.log" 2>&1 &
  echo $! >"$pids/$name.pid"
}

# stop_and_die MESSAGE: stops what this run started, then fails.
stop_and_die() {
  "$root/deploy/local/down.sh" >/dev/null 2>&1 || true
  die "$*"
}

rm -f "$logs"/router.log "$logs"/prefill-*.log "$logs"/decode-*.log  # the last run's
router_flags=(--port "$port" --model "$model")
[[ -n $mode ]] && router_flags+=(--mode "$mode")
start router "$bin/tandem-router" "${router_flags[@]}"
worker_flags=(--router "$address" --model "$model" --threads "$threads" --device "$device")
# metrics_port N: the metrics port of the N-th worker (prefill first), 0 with base 0.
metrics_port() { ((metrics_base == 0)) && echo 0 || echo $((metrics_base + $1)); }
metrics_ports=()
for ((i = 0; i < prefill; i++)); do
  metrics_ports+=("prefill-$i:$(metrics_port "$i")")
  start "prefill-$i" "$bin/tandem-prefill" "${worker_flags[@]}" --kv-transport "$kv_transport" \
    --metrics-port "$(metrics_port "$i")"
done
for ((i = 0; i < decode; i++)); do
  metrics_ports+=("decode-$i:$(metrics_port $((prefill + i)))")
  start "decode-$i" "$bin/tandem-decode" "${worker_flags[@]}" \
    --metrics-port "$(metrics_port $((prefill + i)))"
done

# Wait until every worker has registered; report any process that died on the way.
health_json() {
  "$bin/tandem" client --router "$address" --health --json --timeout 2 2>/dev/null
}
# json_field NAME: NAME's value in the one-line JSON object on stdin (no quotes).
json_field() { { grep -o "\"$1\":\"\{0,1\}[a-z0-9]*" || true; } | sed -n '1{s/.*://; s/"//; p;}'; }
deadline=$((SECONDS + up_timeout))
while :; do
  sleep 1
  for f in "$pids"/*.pid; do
    name=${f##*/}
    name=${name%.pid}
    if ! kill -0 "$(<"$f")" 2>/dev/null; then
      echo "up.sh: $name exited; the end of its log ($logs/$name.log):" >&2
      tail -n 30 "$logs/$name.log" >&2
      stop_and_die "$name did not start"
    fi
  done
  if health=$(health_json); then
    have_prefill=$(json_field prefill_workers <<<"$health")
    have_decode=$(json_field decode_workers <<<"$health")
    if ((${have_prefill:-0} >= prefill && ${have_decode:-0} >= decode)); then break; fi
  fi
  if ((SECONDS >= deadline)); then
    echo "up.sh: after ${up_timeout}s, ${have_prefill:-0}/$prefill prefill and" \
      "${have_decode:-0}/$decode decode workers have registered; the ends of the logs:" >&2
    for f in "$logs"/router.log "$logs"/prefill-*.log "$logs"/decode-*.log; do
      [[ -e $f ]] || continue
      echo "== $f" >&2
      tail -n 15 "$f" >&2
    done
    stop_and_die "tandem did not come up"
  fi
done

mode_now=$(json_field mode <<<"$health")
router_flag=
[[ $port == 50051 ]] || router_flag=" --router $address"
stop_env=
[[ -z ${TANDEM_BUILD_DIR:-}${TANDEM_RUN_DIR:-} ]] || stop_env="TANDEM_RUN_DIR=$run_dir "
cat <<EOF
tandem is up: router $address (mode ${mode_now:-?}), $prefill prefill and $decode decode workers, $threads threads each
logs:  $logs/
metrics: ${metrics_ports[*]} (http://127.0.0.1:PORT/metrics; Prometheus: deploy/prometheus/prometheus.yml)
try:   $bin/tandem client$router_flag --chat "What is the capital of France?"
       $bin/tandem client$router_flag --health
stop:  ${stop_env}deploy/local/down.sh
EOF
