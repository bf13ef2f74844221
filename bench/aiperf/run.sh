#!/usr/bin/env bash
# Benchmarks an OpenAI-compatible server with NVIDIA's aiperf (a client nobody here wrote):
# for each server KIND and each concurrency it starts the server, waits until it answers a
# real chat request, runs `aiperf profile` (streaming chat, fixed ISL/OSL), writes a
# summary.json beside aiperf's own exports, and stops the server.
#
#   bench/aiperf/run.sh llama                         # llama-server only
#   bench/aiperf/run.sh llama tandem-collocated tandem-disagg
#   OUT=bench-results/aiperf-x bench/aiperf/run.sh tandem-disagg   # add a kind to a run dir
#   bench/aiperf/table.py bench-results/aiperf-x                   # the markdown table
#
# Kinds
#   llama              llama-server (bench/llama_cpp/build.sh) on the same GGUF, -t $THREADS,
#                      --parallel = the run's concurrency (so restarted per concurrency),
#                      -c = concurrency * (ISL + OSL + CTX_MARGIN), --alias <model id>.
#   tandem-collocated  deploy/local/up.sh --mode collocated --prefill 0 --decode 1
#                      (one decode worker with every core: $THREADS threads)
#   tandem-disagg      deploy/local/up.sh --mode disaggregated --prefill 1 --decode 1
#                      ($THREADS/2 threads each), the same split as bench/serving_sweep.sh
#   tandem processes run with TANDEM_RUN_DIR=$OUT/tandem-run (their logs and pid files), are
#   restarted per concurrency too, and are stopped with deploy/local/down.sh. The router's
#   OpenAI API is expected on http://127.0.0.1:8000 (its --http-port default).
#
# Workload (aiperf flags; the same for every kind): synthetic prompts (aiperf's default
# Shakespeare corpus) of ISL tokens (stddev 0) as one user message, OSL output tokens
# (max_completion_tokens=OSL, stddev 0, plus ignore_eos=true so every answer is exactly OSL
# tokens), streaming chat completions, fixed --random-seed, closed loop at --concurrency C,
# WARMUP requests first (not measured), then REQUESTS requests. Token counts are the
# server's (usage, via stream_options.include_usage: --use-server-token-count), which also
# keeps aiperf from re-tokenizing every answer on the 2 cores the servers need.
#
# Settings (environment)
#   CONCURRENCIES="1 8 32"  ISL=128  OSL=64  SEED=42  THREADS=2  (THREADS: server threads)
#   RATES=                open-loop runs instead: Poisson arrivals at each rate (req/s), at
#                         most RATE_MAX_CONCURRENCY (64) in flight; results in r<rate>/
#   GOODPUT=              aiperf --goodput SLOs, e.g. "time_to_first_token:3000 inter_token_latency:100"
#   REQUESTS=             requests per concurrency; default max(MIN_REQUESTS, REQ_PER_SLOT * C)
#   MIN_REQUESTS=24  REQ_PER_SLOT=4
#   WARMUP=               warmup requests; default max(2, C)
#   EXTRA_INPUTS="ignore_eos:true temperature:0"   request body fields (aiperf --extra-inputs)
#   AIPERF_EXTRA_ARGS=    more aiperf flags, appended
#   AIPERF_TIMEOUT=900    seconds one aiperf run may take
#   OUT=bench-results/aiperf-<UTC date>   results (bench-results/ is git-ignored)
#   MODEL_GGUF=~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf   (`tandem model pull`)
#   TOKENIZER_DIR=~/.cache/tandem/tokenizers/<gguf stem>   (made by export_tokenizer.py if missing)
#   LLAMA_PORT=8080  CTX_MARGIN=256  LLAMA_EXTRA_ARGS=
#   TANDEM_URL=http://127.0.0.1:8000  TANDEM_GRPC_PORT=50051
#   TANDEM_BUILD=1        1: the first tandem start lets up.sh build (incremental); 0: --no-build
#   TANDEM_BUILD_DIR      as for up.sh (default build/)
#   TANDEM_COLLOCATED_FLAGS / TANDEM_DISAGG_FLAGS   replace the up.sh flags above
#   READY_TIMEOUT=300     seconds to wait for a server to answer
#   TANDEM_API_KEY        when set, the router requires it (its own default); run.sh sends it
#                         (aiperf --api-key, masked in the recorded commands) to tandem kinds
#   OMP_WAIT_POLICY       passed to llama-server (see bench/llama_cpp/README.md); recorded
#
# Layout: $OUT/<kind>/c<C>/{aiperf/ (aiperf's exports: profile_export_aiperf.json/.csv,
# profile_export.jsonl, logs/), aiperf.out, server.log, summary.json}, $OUT/run.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bench/aiperf

CONCURRENCIES=${CONCURRENCIES:-"1 8 32"}
RATES=${RATES:-}
RATE_MAX_CONCURRENCY=${RATE_MAX_CONCURRENCY:-64}
GOODPUT=${GOODPUT:-}
ISL=${ISL:-128}
OSL=${OSL:-64}
SEED=${SEED:-42}
THREADS=${THREADS:-2}
REQUESTS=${REQUESTS:-}
MIN_REQUESTS=${MIN_REQUESTS:-24}
REQ_PER_SLOT=${REQ_PER_SLOT:-4}
WARMUP=${WARMUP:-}
EXTRA_INPUTS=${EXTRA_INPUTS:-"ignore_eos:true temperature:0"}
AIPERF_EXTRA_ARGS=${AIPERF_EXTRA_ARGS:-}
AIPERF_TIMEOUT=${AIPERF_TIMEOUT:-900}
OUT=${OUT:-$ROOT/bench-results/aiperf-$(date -u +%Y%m%d-%H%M%S)}
MODEL_GGUF=${MODEL_GGUF:-$HOME/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LLAMA_PORT=${LLAMA_PORT:-8080}
CTX_MARGIN=${CTX_MARGIN:-256}
LLAMA_EXTRA_ARGS=${LLAMA_EXTRA_ARGS:-}
TANDEM_URL=${TANDEM_URL:-http://127.0.0.1:8000}
TANDEM_GRPC_PORT=${TANDEM_GRPC_PORT:-50051}
TANDEM_BUILD=${TANDEM_BUILD:-1}
HALF_THREADS=$((THREADS / 2 > 0 ? THREADS / 2 : 1))
TANDEM_COLLOCATED_FLAGS=${TANDEM_COLLOCATED_FLAGS:-"--mode collocated --prefill 0 --decode 1 --threads-per-worker $THREADS"}
TANDEM_DISAGG_FLAGS=${TANDEM_DISAGG_FLAGS:-"--mode disaggregated --prefill 1 --decode 1 --threads-per-worker $HALF_THREADS"}
READY_TIMEOUT=${READY_TIMEOUT:-300}

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

(($# > 0)) || { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
for kind in "$@"; do
  case $kind in llama|tandem-collocated|tandem-disagg) ;; *) die "unknown kind '$kind'" ;; esac
done
for c in $CONCURRENCIES; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad concurrency '$c'"; done
for r in $RATES; do [[ $r =~ ^[0-9]*\.?[0-9]+$ ]] || die "bad rate '$r'"; done
# Each run is a point: "c<concurrency>" (closed loop) or, with RATES, "r<rate>" (open loop).
POINTS=()
if [[ -n $RATES ]]; then
  for r in $RATES; do POINTS+=("r$r"); done
else
  for c in $CONCURRENCIES; do POINTS+=("c$c"); done
fi
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export TANDEM_RUN_DIR=$OUT/tandem-run

# --- tools: aiperf, the model, its tokenizer, llama-server ---------------------------------
AIPERF_PATHS=$("$HERE/setup.sh")
AIPERF=$(sed -n 's/^AIPERF=//p' <<<"$AIPERF_PATHS")
VENV=$(sed -n 's/^AIPERF_VENV=//p' <<<"$AIPERF_PATHS")
PY=$VENV/bin/python

if [[ ! -f $MODEL_GGUF ]]; then
  TANDEM_CLI=${TANDEM_BUILD_DIR:-$ROOT/build}/bin/tandem
  [[ -x $TANDEM_CLI ]] || die "no model at $MODEL_GGUF and no $TANDEM_CLI to pull it"
  "$TANDEM_CLI" model pull >&2
fi
[[ -f $MODEL_GGUF ]] || die "no model at $MODEL_GGUF"
MODEL_STEM=$(basename "$MODEL_GGUF" .gguf)
TOKENIZER_DIR=${TOKENIZER_DIR:-$HOME/.cache/tandem/tokenizers/$MODEL_STEM}
if [[ ! -f $TOKENIZER_DIR/tokenizer.json ]]; then
  "$PY" "$HERE/export_tokenizer.py" --gguf "$MODEL_GGUF" --out "$TOKENIZER_DIR" >&2
fi

LLAMA_SERVER=
for kind in "$@"; do
  if [[ $kind == llama ]]; then
    LLAMA_SERVER=$(sed -n 's/^LLAMA_SERVER=//p' <<<"$("$ROOT/bench/llama_cpp/build.sh")")
    [[ -x $LLAMA_SERVER ]] || die "bench/llama_cpp/build.sh gave no llama-server"
  fi
done

# --- server lifecycle ----------------------------------------------------------------------
SERVER_PID=        # llama-server's pid, when one runs
TANDEM_UP=0        # 1 while deploy/local/up.sh's processes run
TANDEM_BUILT=0
SERVER_CMD=
AUTH_KEY=           # the API key the server under test requires, if any

stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
  if ((TANDEM_UP)); then
    "$ROOT/deploy/local/down.sh" >&2 || true
    TANDEM_UP=0
  fi
}
trap 'stop_server' EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready URL LOGFILE: until GET URL/v1/models answers and one real chat request succeeds.
wait_ready() {
  local url=$1 logfile=$2 deadline=$((SECONDS + READY_TIMEOUT)) models
  while :; do
    if [[ -n $SERVER_PID ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 30 "$logfile" >&2; die "the server exited (log: $logfile)"
    fi
    if models=$(curl -sf --max-time 5 ${AUTH_KEY:+-H "Authorization: Bearer $AUTH_KEY"} \
                  "$url/v1/models"); then break; fi
    ((SECONDS < deadline)) || { tail -n 30 "$logfile" >&2; die "no /v1/models at $url after ${READY_TIMEOUT}s"; }
    sleep 1
  done
  MODEL_NAME=$("$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])' <<<"$models")
  while :; do
    if curl -sf --max-time 60 "$url/v1/chat/completions" -H 'Content-Type: application/json' \
         ${AUTH_KEY:+-H "Authorization: Bearer $AUTH_KEY"} \
         -d "{\"model\":\"$MODEL_NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2}" \
         >/dev/null; then
      return 0
    fi
    ((SECONDS < deadline)) || { tail -n 30 "$logfile" >&2; die "no chat completion from $url after ${READY_TIMEOUT}s"; }
    sleep 2
  done
}

# start_server KIND C DIR: starts KIND for concurrency C; sets URL and SERVER_CMD.
start_server() {
  local kind=$1 c=$2 dir=$3
  case $kind in
    llama)
      port_busy "$LLAMA_PORT" && die "port $LLAMA_PORT is in use (LLAMA_PORT=)"
      local ctx=$((c * (ISL + OSL + CTX_MARGIN)))
      # shellcheck disable=SC2206
      local cmd=("$LLAMA_SERVER" -m "$MODEL_GGUF" -t "$THREADS" -tb "$THREADS" --parallel "$c" -c "$ctx"
                 --host 127.0.0.1 --port "$LLAMA_PORT" --alias "$MODEL_STEM" $LLAMA_EXTRA_ARGS)
      SERVER_CMD="${OMP_WAIT_POLICY:+OMP_WAIT_POLICY=$OMP_WAIT_POLICY }${cmd[*]}"
      setsid "${cmd[@]}" </dev/null >"$dir/server.log" 2>&1 &
      SERVER_PID=$!
      URL=http://127.0.0.1:$LLAMA_PORT
      AUTH_KEY=
      wait_ready "$URL" "$dir/server.log"
      ;;
    tandem-*)
      local flags
      [[ $kind == tandem-collocated ]] && flags=$TANDEM_COLLOCATED_FLAGS || flags=$TANDEM_DISAGG_FLAGS
      local http_port=${TANDEM_URL##*:}
      http_port=${http_port%%/*}
      port_busy "$http_port" && die "port $http_port (TANDEM_URL) is in use: is another tandem router running?"
      local build_flag=--no-build
      if [[ $TANDEM_BUILD == 1 ]] && ((!TANDEM_BUILT)); then build_flag=; fi
      # shellcheck disable=SC2206
      local cmd=("$ROOT/deploy/local/up.sh" $flags --port "$TANDEM_GRPC_PORT" $build_flag)
      SERVER_CMD="TANDEM_RUN_DIR=$TANDEM_RUN_DIR ${cmd[*]}"
      TANDEM_UP=1
      "${cmd[@]}" >"$dir/server.log" 2>&1 || { tail -n 40 "$dir/server.log" >&2; die "$kind did not start"; }
      TANDEM_BUILT=1
      URL=${TANDEM_URL%/}
      AUTH_KEY=${TANDEM_API_KEY:-}
      wait_ready "$URL" "$TANDEM_RUN_DIR/logs/router.log"
      ;;
  esac
}

# --- the runs --------------------------------------------------------------------------------
AIPERF_VERSION=$("$AIPERF" --version 2>/dev/null | tail -1)
log "aiperf $AIPERF_VERSION; kinds: $*; concurrencies: $CONCURRENCIES; ISL=$ISL OSL=$OSL; out: $OUT"

for kind in "$@"; do
  for point in "${POINTS[@]}"; do
    load_args=()
    if [[ $point == r* ]]; then
      rate=${point#r}
      c=$RATE_MAX_CONCURRENCY
      n=${REQUESTS:-$MIN_REQUESTS}
      w=${WARMUP:-2}
      load_args=(--request-rate "$rate" --arrival-pattern poisson --concurrency "$c")
    else
      rate=
      c=${point#c}
      n=${REQUESTS:-$((c * REQ_PER_SLOT > MIN_REQUESTS ? c * REQ_PER_SLOT : MIN_REQUESTS))}
      w=${WARMUP:-$((c > 2 ? c : 2))}
      load_args=(--concurrency "$c")
    fi
    [[ -n $GOODPUT ]] && load_args+=(--goodput "$GOODPUT")
    dir=$OUT/$kind/$point
    rm -rf "$dir"
    mkdir -p "$dir"
    log "$kind $point: starting the server"
    start_server "$kind" "$c" "$dir"
    log "$kind $point: ready at $URL (model '$MODEL_NAME'); aiperf: $n requests after $w warmup"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    # shellcheck disable=SC2206
    aiperf_cmd=("$AIPERF" profile
      --model "$MODEL_NAME" --url "$URL" --endpoint-type chat --streaming
      --tokenizer "$TOKENIZER_DIR"
      --isl "$ISL" --isl-stddev 0 --osl "$OSL" --osl-stddev 0
      --extra-inputs $EXTRA_INPUTS
      --use-server-token-count
      "${load_args[@]}" --request-count "$n" --warmup-request-count "$w"
      --random-seed "$SEED"
      --artifact-dir "$dir/aiperf"
      --ui-type none --no-server-metrics --no-gpu-telemetry
      $AIPERF_EXTRA_ARGS)
    shown_cmd="${aiperf_cmd[*]}"
    [[ -n $AUTH_KEY ]] && shown_cmd+=" --api-key <TANDEM_API_KEY>"
    [[ -n $AUTH_KEY ]] && aiperf_cmd+=(--api-key "$AUTH_KEY")
    echo "$shown_cmd" >"$dir/aiperf.cmd"
    rc=0
    # NOTE: not HF_HUB_OFFLINE=1: in offline mode aiperf 0.13 looks every --tokenizer up in the
    # HF cache (snapshot_download) and refuses a local directory; online, an absolute path is
    # loaded as a local directory without any network access.
    HF_HUB_DISABLE_TELEMETRY=1 timeout "$AIPERF_TIMEOUT" "${aiperf_cmd[@]}" \
      >"$dir/aiperf.out" 2>&1 || rc=$?
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    stop_server
    if ((rc != 0)); then
      tail -n 30 "$dir/aiperf.out" >&2
      die "aiperf failed ($rc) for $kind $point; see $dir/aiperf.out"
    fi
    "$PY" "$HERE/summarize.py" --dir "$dir" --kind "$kind" --concurrency "$c" --rate "$rate" \
      --isl "$ISL" --osl "$OSL" --requests "$n" --warmup "$w" --seed "$SEED" \
      --server-cmd "$SERVER_CMD" --aiperf-cmd "$shown_cmd" \
      --load-before "$load_before" --load-after "$load_after" \
      --omp-wait-policy "${OMP_WAIT_POLICY:-}" >"$dir/summary.json"
    log "$kind $point: $("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); print("TTFT p50 %.1f ms, ITL p50 %.2f ms, %.1f output tok/s, %.2f req/s, %d errors" % (s["ttft_ms"]["p50"], s["itl_ms"]["p50"], s["output_tokens_per_s"], s["requests_per_s"], s["errors"]))' "$dir/summary.json")"
  done
done

log "done: $OUT"
"$PY" "$HERE/table.py" "$OUT" | tee -a "$OUT/run.log"
