#!/usr/bin/env bash
# Collocated vs disaggregated serving on this machine, swept over Poisson request rates.
#
#   collocated:    tandem-router --mode collocated + one tandem-decode --threads 2
#   disaggregated: tandem-router --mode disaggregated + one tandem-prefill --threads 1
#                  + one tandem-decode --threads 1
#
# 1. Baselines: for each mode, start the processes, send BASELINE_REQUESTS requests one at a
#    time (the sweep's prompt/output distribution) and stop them.
# 2. SLOs: SLO_FACTOR x the lower of the modes' unloaded median TTFT, and the same for TPOT
#    (one SLO for both, set by the faster unloaded system), unless SLO_TTFT_MS/SLO_TPOT_MS.
# 3. For each mode: start the processes, run `tandem bench serve --rate R` for each rate in
#    RATES with those SLOs, stop them.
# 4. bench/plot_serving.py draws every run into $OUT/serving.png (TTFT, ITL, goodput vs rate).
#
# Every process logs to $OUT/logs/; each run writes $OUT/<mode>-rate<R>.json.
#
# Settings (environment):
#   RATES="0.1 0.2 0.3 0.5 0.8"   request rates, requests/s
#   NUM_REQUESTS=50               requests per rate
#   PROMPT_MIN=512 PROMPT_MAX=2048 OUTPUT_MIN=64 OUTPUT_MAX=256
#   BASELINE_REQUESTS=8           unloaded requests per mode
#   SLO_FACTOR=3                  SLO = factor x unloaded median
#   SLO_TTFT_MS= SLO_TPOT_MS=     fixed SLOs (skip the baselines when both are given)
#   MODES="collocated disaggregated"
#   SEED=1                        run k of each mode uses seed SEED+k (baselines SEED+1000)
#   WARMUP=1 TIMEOUT=600          passed to tandem bench serve
#   PORT=50151 MODEL=default      the router's port; the model every process loads
#   WORKER_FLAGS=""               more flags for both workers (e.g. --kv-cache-mb 1024)
#   PIN=0                         1: taskset the workers (collocated decode on cores 0-1;
#                                 prefill on core 0, decode on core 1)
#   BIN=build/bin  OUT=bench-results/serving-<date>  TANDEM_PYTHON=python3 (with matplotlib)
#
# Example, a tiny check: RATES="0.2 0.5" NUM_REQUESTS=4 PROMPT_MAX=256 bench/serving_sweep.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/build/bin}
OUT=${OUT:-$ROOT/bench-results/serving-$(date -u +%Y%m%d-%H%M%S)}
RATES=${RATES:-"0.1 0.2 0.3 0.5 0.8"}
MODES=${MODES:-"collocated disaggregated"}
NUM_REQUESTS=${NUM_REQUESTS:-50}
PROMPT_MIN=${PROMPT_MIN:-512}
PROMPT_MAX=${PROMPT_MAX:-2048}
OUTPUT_MIN=${OUTPUT_MIN:-64}
OUTPUT_MAX=${OUTPUT_MAX:-256}
BASELINE_REQUESTS=${BASELINE_REQUESTS:-8}
SLO_FACTOR=${SLO_FACTOR:-3}
SLO_TTFT_MS=${SLO_TTFT_MS:-}
SLO_TPOT_MS=${SLO_TPOT_MS:-}
SEED=${SEED:-1}
WARMUP=${WARMUP:-1}
TIMEOUT=${TIMEOUT:-600}
PORT=${PORT:-50151}
MODEL=${MODEL:-default}
WORKER_FLAGS=${WORKER_FLAGS:-}
PIN=${PIN:-0}
PYTHON=${TANDEM_PYTHON:-python3}
ROUTER=127.0.0.1:$PORT

for exe in tandem tandem-router tandem-prefill tandem-decode; do
  [[ -x $BIN/$exe ]] || { echo "serving_sweep: $BIN/$exe is missing (build first, or set BIN)" >&2; exit 1; }
done
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

PIDS=()
log() { echo "[sweep $(date -u +%H:%M:%S)] $*" >&2; }

# Workers first (they drain), then the router; SIGKILL whatever is left after 30 s.
stop_servers() {
  ((${#PIDS[@]})) || return 0
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

# Run in the background (`pinned ... &`): exec, so that $! is the server itself and
# stop_servers signals it, not a subshell that would leave it running.
pinned() {  # pinned CPUS COMMAND...: taskset when PIN=1
  local cpus=$1; shift
  if [[ $PIN == 1 ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

start_servers() {  # start_servers MODE TAG
  local mode=$1 logs=$OUT/logs/$1-$2
  mkdir -p "$logs"
  log "starting $mode (logs: $logs)"
  "$BIN/tandem-router" --port "$PORT" --host 127.0.0.1 --model "$MODEL" --mode "$mode" \
    >"$logs/router.log" 2>&1 &
  PIDS=($!)
  # Word splitting of WORKER_FLAGS is intended.
  # shellcheck disable=SC2086
  if [[ $mode == collocated ]]; then
    pinned 0-1 "$BIN/tandem-decode" --router "$ROUTER" --model "$MODEL" --threads 2 \
      $WORKER_FLAGS >"$logs/decode.log" 2>&1 &
    PIDS+=($!)
  else
    pinned 0 "$BIN/tandem-prefill" --router "$ROUTER" --model "$MODEL" --threads 1 \
      $WORKER_FLAGS >"$logs/prefill.log" 2>&1 &
    PIDS+=($!)
    pinned 1 "$BIN/tandem-decode" --router "$ROUTER" --model "$MODEL" --threads 1 \
      $WORKER_FLAGS >"$logs/decode.log" 2>&1 &
    PIDS+=($!)
  fi
  if ! "$BIN/tandem" bench serve --router "$ROUTER" --model "$MODEL" \
    --num-requests 0 --wait-ready 120 --mode "$mode"; then
    log "$mode did not become ready; see $logs"
    exit 1
  fi
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { log "process $pid exited; see $logs"; exit 1; }
  done
}

# NOTE: a run against a server that already served the same seed resends the same prompts,
# and prefix caching would serve them from cache; every run here has its own seed (the same
# for both modes), so no prompt repeats within a server's life.
bench() {  # bench MODE JSON SEED FLAGS...
  local mode=$1 json=$2 seed=$3; shift 3
  "$BIN/tandem" bench serve --router "$ROUTER" --model "$MODEL" --label "$mode" \
    --prompt-tokens-min "$PROMPT_MIN" --prompt-tokens-max "$PROMPT_MAX" \
    --output-tokens-min "$OUTPUT_MIN" --output-tokens-max "$OUTPUT_MAX" \
    --seed "$seed" --warmup "$WARMUP" --timeout "$TIMEOUT" --json "$json" "$@" \
    | tee -a "$OUT/summary.txt" || log "$mode: tandem bench serve failed ($*)"
  echo | tee -a "$OUT/summary.txt"
}

json_number() {  # json_number FILE KEY...: summary value, e.g. ttft_ms p50
  "$PYTHON" -c 'import json, sys
v = json.load(open(sys.argv[1]))["summary"]
for k in sys.argv[2:]: v = v[k]
print(round(v, 3))' "$@"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (modified)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rates: $RATES; $NUM_REQUESTS requests each; prompts $PROMPT_MIN-$PROMPT_MAX, outputs $OUTPUT_MIN-$OUTPUT_MAX; seed $SEED; pin $PIN"
} | tee "$OUT/meta.txt" >&2

# 1-2. Baselines and SLOs.
if [[ -z $SLO_TTFT_MS || -z $SLO_TPOT_MS ]]; then
  best_ttft="" best_tpot=""
  for mode in $MODES; do
    start_servers "$mode" baseline
    log "$mode: unloaded baseline, $BASELINE_REQUESTS requests one at a time"
    bench "$mode" "$OUT/baseline-$mode.json" $((SEED + 1000)) --concurrency 1 --num-requests "$BASELINE_REQUESTS"
    stop_servers
    ttft=$(json_number "$OUT/baseline-$mode.json" ttft_ms p50)
    tpot=$(json_number "$OUT/baseline-$mode.json" tpot_ms p50)
    echo "baseline $mode: TTFT p50 $ttft ms, TPOT p50 $tpot ms" | tee -a "$OUT/meta.txt" >&2
    best_ttft=$("$PYTHON" -c "import sys; print(min(float(x) for x in sys.argv[1:] if x))" "$best_ttft" "$ttft")
    best_tpot=$("$PYTHON" -c "import sys; print(min(float(x) for x in sys.argv[1:] if x))" "$best_tpot" "$tpot")
  done
  SLO_TTFT_MS=${SLO_TTFT_MS:-$("$PYTHON" -c "print(round($SLO_FACTOR * $best_ttft, 1))")}
  SLO_TPOT_MS=${SLO_TPOT_MS:-$("$PYTHON" -c "print(round($SLO_FACTOR * $best_tpot, 2))")}
fi
echo "SLOs: TTFT <= $SLO_TTFT_MS ms, TPOT <= $SLO_TPOT_MS ms" | tee -a "$OUT/meta.txt" >&2

# 3. The sweep.
runs=()
for mode in $MODES; do
  start_servers "$mode" sweep
  i=0
  for rate in $RATES; do
    i=$((i + 1))
    log "$mode: rate $rate req/s, $NUM_REQUESTS requests"
    bench "$mode" "$OUT/$mode-rate$rate.json" $((SEED + i)) --rate "$rate" --num-requests "$NUM_REQUESTS" \
      --slo-ttft-ms "$SLO_TTFT_MS" --slo-tpot-ms "$SLO_TPOT_MS" --quiet
    [[ -f $OUT/$mode-rate$rate.json ]] && runs+=("$OUT/$mode-rate$rate.json")
  done
  stop_servers
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/meta.txt" >&2

# 4. The plot.
if ((${#runs[@]} == 0)); then
  log "no run wrote a JSON file; see $OUT/logs"
  exit 1
elif "$PYTHON" -c 'import matplotlib' 2>/dev/null; then
  "$PYTHON" "$ROOT/bench/plot_serving.py" --out "$OUT/serving.png" \
    --slo-ttft-ms "$SLO_TTFT_MS" --slo-tpot-ms "$SLO_TPOT_MS" "${runs[@]}" | tee "$OUT/points.txt"
else
  log "no plot: $PYTHON cannot import matplotlib (set TANDEM_PYTHON to a python that has it); then:"
  log "  python3 bench/plot_serving.py --out $OUT/serving.png --slo-ttft-ms $SLO_TTFT_MS --slo-tpot-ms $SLO_TPOT_MS $OUT/*-rate*.json"
fi
log "done: $OUT"
