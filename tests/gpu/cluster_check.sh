#!/usr/bin/env bash
# The serving stack on the GPU: runs ON the GPU machine (device_check.sh calls it when the
# bundle holds the router and workers; see prepare_bundle.sh CLUSTER=1), or here on the CPU
# to check the script (DEVICE=cpu TRANSPORTS=tcp tests/gpu/cluster_check.sh build-serve /tmp/x).
#
#   tests/gpu/cluster_check.sh BUNDLE_DIR LOG_DIR
#
# 1. integration.disagg_equality_test with its workers on the GPU: a router, a prefill worker
#    (--device cuda --kv-transport cuda_ipc) and a decode worker (--device cuda) on the one
#    GPU; the greedy tokens must equal the in-process CUDA engine's.
# 2. TTFT of 2,048-token prompts, one request at a time (12 after 2 warm-ups, 4 output
#    tokens), through `tandem bench serve`: collocated (the decode worker prefills: "prefill
#    alone") and disaggregated over each KV transport in $TRANSPORTS (cuda_ipc tcp).
# Prints "[ cluster  ]" lines. Exit: 1 when the equality test fails, 2 when a bench fails.
# Env: TANDEM_TEST_MODEL (the GGUF; required), DEVICE (cuda), TRANSPORTS ("cuda_ipc tcp"),
# PROMPT_TOKENS (2048), BUDGET_S (600: every step's limit is cut to what is left of it).
set -uo pipefail
[[ $# == 2 ]] || { echo "usage: $0 BUNDLE_DIR LOG_DIR" >&2; exit 2; }
bin=$(cd "$1" && pwd)/bin || exit 1
logs=$2
mkdir -p "$logs"
model=${TANDEM_TEST_MODEL:?TANDEM_TEST_MODEL must name the GGUF}
device=${DEVICE:-cuda}
transports=${TRANSPORTS:-cuda_ipc tcp}
prompt_tokens=${PROMPT_TOKENS:-2048}
budget=${BUDGET_S:-600}
# limit CAP: a step's time limit, CAP or what is left of the budget if less; at least 1 s
# (`timeout 0` would mean no limit at all).
limit() {
  local left=$((budget - SECONDS))
  ((left < 1)) && left=1
  echo $((left < $1 ? left : $1))
}
rc=0

if [[ -x $bin/disagg_equality_test ]]; then
  TANDEM_BIN_DIR=$bin TANDEM_TEST_DEVICE=$device \
    TANDEM_TEST_KV_TRANSPORT=$(awk '{print $1}' <<<"$transports") \
    timeout -k 10 "$(limit 240)" "$bin/disagg_equality_test" --gtest_brief=1 \
    --gtest_filter='DisaggEqualityTest.OnePrefillOneDecodeMatchesSingleProcess:DisaggEqualityTest.PerRequestModesAndStopStrings' \
    >"$logs/cluster_equality.log" 2>&1
  erc=$?
  ((erc != 0)) && rc=1
  echo "[ cluster  ] disagg_equality_test on $device ($(awk '{print $1}' <<<"$transports")): rc=$erc," \
    "$(grep -E '^\[  (PASSED|FAILED)  \]' "$logs/cluster_equality.log" | tr '\n' ' ')"
  ((erc != 0)) && grep -E 'Failure|disaggregated \[|Which is|error' "$logs/cluster_equality.log" | head -20
fi

[[ -x $bin/tandem-router && -x $bin/tandem ]] || exit $rc
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  # A draining worker exits in a second or two; one that hangs must not hold the device call.
  for _ in $(seq 20); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.5
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  pids=()
}
trap stop_all EXIT
start() {  # NAME BINARY ARGS...
  local name=$1
  shift
  "$bin/$1" "${@:2}" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}
# wait_ready ROUTER PREFILL_COUNT LABEL: until the router lists the workers (1 decode, N
# prefill). Fails at once when a process of the cluster has exited (a worker that cannot
# start must not cost the device minutes of waiting), or after 120 s (less if the budget is).
wait_ready() {
  local router=$1 want_prefill=$2 label=$3
  local wait_s
  wait_s=$(limit 120)
  local deadline=$((SECONDS + wait_s))
  while ((SECONDS < deadline)); do
    for p in "${pids[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "[ cluster  ] ttft $label: a process exited before the cluster was ready:"
        grep -h -iE 'error|fail|refus|no cuda|unavailable' "$logs"/*-"$label".log | tail -5
        return 1
      fi
    done
    if "$bin/tandem" client --router "$router" --health --json --timeout 2 2>/dev/null |
      python3 -c "import json,sys; h=json.load(sys.stdin); sys.exit(0 if h['decode_workers'] >= 1 and h['prefill_workers'] >= $want_prefill else 1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "[ cluster  ] ttft $label: the workers did not register within $wait_s s"
  return 1
}

# ttft LABEL MODE [TRANSPORT]: one cluster, one bench; prints the TTFT line.
ttft() {
  local label=$1 mode=$2 transport=${3:-tcp}
  if (($(limit 60) < 60)); then  # too little time left to start a cluster and bench it
    echo "[ cluster  ] ttft $label: not run (time budget spent)"
    rc=$((rc == 1 ? 1 : 2))
    return
  fi
  # Below the kernel's ephemeral ports (32768-60999), which outgoing connections take.
  local port=$((20000 + RANDOM % 12000))
  local router=127.0.0.1:$port
  start "router-$label" tandem-router --port "$port" --host 127.0.0.1 --model "$model" \
    --mode "$mode" --http-port -1
  sleep 0.5
  if [[ $mode == disaggregated ]]; then
    start "prefill-$label" tandem-prefill --router "$router" --model "$model" --device "$device" \
      --kv-transport "$transport" --metrics-port -1 --kv-cache-mb 1024
  fi
  start "decode-$label" tandem-decode --router "$router" --model "$model" --device "$device" \
    --metrics-port -1 --kv-cache-mb 1024
  local json=$logs/ttft-$label.json
  if ! wait_ready "$router" "$([[ $mode == disaggregated ]] && echo 1 || echo 0)" "$label"; then
    stop_all
    rc=$((rc == 1 ? 1 : 2))
    return
  fi
  timeout -k 10 "$(limit 240)" "$bin/tandem" bench serve --router "$router" --concurrency 1 --num-requests 12 \
    --warmup 2 --prompt-tokens "$prompt_tokens" --output-tokens 4 --model "$model" \
    --label "$label" --json "$json" --quiet >"$logs/ttft-$label.log" 2>&1
  local brc=$?
  stop_all
  if ((brc != 0)) || [[ ! -f $json ]]; then
    echo "[ cluster  ] ttft $label: bench failed (rc=$brc)"
    tail -5 "$logs/ttft-$label.log"
    tail -q -n 5 "$logs"/*-"$label".log | grep -iE 'error|fail' | head -5
    rc=$((rc == 1 ? 1 : 2))
    return
  fi
  python3 - "$json" "$label" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
t = s["ttft_ms"]
print(f"[ cluster  ] ttft {sys.argv[2]:<22} p50 {t['p50']:8.2f} ms  p90 {t['p90']:8.2f} ms"
      f"  min {t['min']:8.2f} ms  ({t['count']} requests, {s.get('completed', '?')} completed)")
PY
}

ttft "collocated" collocated
for t in $transports; do ttft "disagg-$t" disaggregated "$t"; done
python3 - "$logs" $transports <<'PY'
import json, os, sys
logs, transports = sys.argv[1], sys.argv[2:]
def p50(label):
    path = os.path.join(logs, f"ttft-{label}.json")
    return json.load(open(path))["summary"]["ttft_ms"]["p50"] if os.path.exists(path) else None
base = p50("collocated")
for t in transports:
    d = p50(f"disagg-{t}")
    if base and d:
        print(f"[ cluster  ] ttft disaggregated ({t}) / collocated (prefill alone): {d / base:.2f}x"
              f" (+{d - base:.2f} ms)")
PY
exit $rc
