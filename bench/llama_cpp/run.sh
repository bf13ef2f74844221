#!/usr/bin/env bash
# Run llama.cpp's benchmarks on MODEL with THREADS threads and print one JSON summary
# to stdout (everything else goes to stderr).
#
# Usage: bench/llama_cpp/run.sh MODEL THREADS
# Env:   RAW_DIR   where the raw outputs are kept (default: a new temp dir; named in the JSON)
#        REPS      llama-bench repetitions (default 3)
#        NPL       batched-bench parallel sequences (default 1,8,32)
#        OMP_WAIT_POLICY  passed through to llama.cpp (OpenMP build). Unset = llama.cpp's
#                  default (threads spin at barriers): best on an idle machine, but on a
#                  shared, oversubscribed machine 2 spinning threads run ~10x slower; use
#                  OMP_WAIT_POLICY=passive there. Recorded in the summary.
#        (and build.sh's TANDEM_HOME / LLAMA_CPP_DIR / LLAMA_CPP_PY_VER / JOBS)
#
# Measures
#   llama-bench         -p 128,512,2048 -n 128 : prefill t/s at 128/512/2048, decode t/s at batch 1
#   llama-batched-bench -npp 128 -ntg 128 -npl 1,8,32 : aggregate decode t/s (S_TG) with
#                        1/8/32 parallel sequences, prompts not shared (N_KV = B*(PP+TG))
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 MODEL THREADS" >&2
  exit 2
fi
MODEL="$1"
THREADS="$2"
[[ -f "$MODEL" ]] || { echo "run.sh: no model file '$MODEL'" >&2; exit 1; }
[[ "$THREADS" =~ ^[0-9]+$ ]] || { echo "run.sh: THREADS must be a number" >&2; exit 2; }
REPS="${REPS:-3}"
NPL="${NPL:-1,8,32}"
PP=128
TG=128

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATHS="$("$HERE/build.sh")"
LLAMA_BENCH="$(sed -n 's/^LLAMA_BENCH=//p' <<<"$PATHS")"
LLAMA_BATCHED_BENCH="$(sed -n 's/^LLAMA_BATCHED_BENCH=//p' <<<"$PATHS")"
STAMP_FILE="$(dirname "$(dirname "$LLAMA_BENCH")")/.tandem-built"

RAW_DIR="${RAW_DIR:-$(mktemp -d /tmp/tandem-llamacpp-bench.XXXXXX)}"
mkdir -p "$RAW_DIR"

# Context for batched-bench: the largest case needs max(NPL) * (PP + TG) cells.
MAX_PL="$(tr ',' '\n' <<<"$NPL" | sort -n | tail -1)"
CTX=$(( MAX_PL * (PP + TG) ))

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)"

BENCH_CMD=("$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 128,512,2048 -n "$TG" -r "$REPS" -o json)
BATCHED_CMD=("$LLAMA_BATCHED_BENCH" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -c "$CTX" -b 2048 -ub 512
             -npp "$PP" -ntg "$TG" -npl "$NPL" --output-format jsonl)

# Peak RSS of each tool, in KiB, when GNU time is there (Debian's `time` package).
TIMER=()
[[ -x /usr/bin/time ]] && TIMER=(/usr/bin/time -f %M -o)

echo "+ ${BENCH_CMD[*]}" >&2
${TIMER[@]:+"${TIMER[@]}" "$RAW_DIR/llama-bench.rss"} "${BENCH_CMD[@]}" >"$RAW_DIR/llama-bench.json" 2>"$RAW_DIR/llama-bench.log" || {
  echo "run.sh: llama-bench failed; see $RAW_DIR/llama-bench.log" >&2; tail -20 "$RAW_DIR/llama-bench.log" >&2; exit 1; }
echo "+ ${BATCHED_CMD[*]}" >&2
${TIMER[@]:+"${TIMER[@]}" "$RAW_DIR/llama-batched-bench.rss"} "${BATCHED_CMD[@]}" >"$RAW_DIR/llama-batched-bench.out" 2>"$RAW_DIR/llama-batched-bench.log" || {
  echo "run.sh: llama-batched-bench failed; see $RAW_DIR/llama-batched-bench.log" >&2; tail -20 "$RAW_DIR/llama-batched-bench.log" >&2; exit 1; }

BENCH_CMD_STR="${BENCH_CMD[*]}" BATCHED_CMD_STR="${BATCHED_CMD[*]}" RAW_DIR="$RAW_DIR" \
STAMP_FILE="$STAMP_FILE" MODEL="$MODEL" THREADS="$THREADS" LOAD_BEFORE="$LOAD_BEFORE" \
python3 - <<'PY'
import json, os, re, socket, datetime

raw = os.environ["RAW_DIR"]
with open(os.path.join(raw, "llama-bench.json")) as f:
    bench = json.load(f)

batched = []
for path in ("llama-batched-bench.out", "llama-batched-bench.log"):
    with open(os.path.join(raw, path), errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{") and '"speed_tg"' in line:
                batched.append(json.loads(line))
    if batched:
        break

def r(x):
    return None if x is None else round(float(x), 2)

prefill, decode_b1, decode_b1_sd, prefill_sd = {}, None, None, {}
first = bench[0] if bench else {}
for t in bench:
    if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0:
        prefill[str(t["n_prompt"])] = r(t["avg_ts"])
        prefill_sd[str(t["n_prompt"])] = r(t.get("stddev_ts"))
    elif t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0:
        decode_b1, decode_b1_sd = r(t["avg_ts"]), r(t.get("stddev_ts"))

agg = {str(b["pl"]): r(b["speed_tg"]) for b in batched}
agg_pp = {str(b["pl"]): r(b["speed_pp"]) for b in batched}

stamp = ""
try:
    stamp = "; ".join(l.strip() for l in open(os.environ["STAMP_FILE"]) if l.strip())
except OSError:
    pass

rss_kib = []
for name in ("llama-bench.rss", "llama-batched-bench.rss"):
    try:
        rss_kib.append(int(open(os.path.join(raw, name)).read().split()[-1]))
    except (OSError, ValueError, IndexError):
        pass

load = None
try:
    load = open("/proc/loadavg").read().split()[:3]
except OSError:
    pass

out = {
    "engine": "llama.cpp",
    "version": {
        "source": stamp,
        "build_commit": first.get("build_commit"),
        "build_number": first.get("build_number"),
    },
    "model": os.environ["MODEL"],
    "model_type": first.get("model_type"),
    "threads": int(os.environ["THREADS"]),
    "cpu_info": first.get("cpu_info"),
    "backends": first.get("backends"),
    "host": socket.gethostname(),
    "peak_rss_mib": round(max(rss_kib) / 1024, 1) if rss_kib else None,
    "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "loadavg_before": os.environ.get("LOAD_BEFORE", "").split() or None,
    "loadavg_after": load,
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    "prefill_tokens_per_s": prefill,
    "prefill_stddev": prefill_sd,
    "decode_batch1_tokens_per_s": decode_b1,
    "decode_batch1_stddev": decode_b1_sd,
    "batched_decode_aggregate_tokens_per_s": agg,
    "batched_prefill_tokens_per_s": agg_pp,
    "batched_settings": ({k: batched[0].get(k) for k in
                          ("n_kv_max", "n_batch", "n_ubatch", "flash_attn", "is_pp_shared", "pp", "tg")}
                         if batched else None),
    "llama_bench_settings": ({k: first.get(k) for k in
                              ("n_batch", "n_ubatch", "type_k", "type_v", "flash_attn", "n_threads")}
                             if first else None),
    "commands": [os.environ["BENCH_CMD_STR"], os.environ["BATCHED_CMD_STR"]],
    "raw_dir": raw,
}
print(json.dumps(out, indent=1))
PY
