#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with a bundle made here by
# tests/gpu/prepare_bundle.sh:   tests/gpu/device_check.sh BUNDLE_DIR|BUNDLE.tar.xz
# Runs every BUNDLE_DIR/bin/*_test (but disagg_equality_test, which is the cluster check's),
# then kernels_bench and cuda_decode_bench when the bundle holds them, then
# tests/gpu/cluster_check.sh when it holds the router and workers (CLUSTER=1 bundles); full
# logs go to $OUT/gpu-logs, packed at the end into $OUT/gpu-logs.tar.gz (a device call brings
# back at most 8 files), or to a temporary folder; a compact summary table is printed last.
# Every step's time limit is cut to what is left of BUDGET_S seconds (default 360), so the
# run ends, summary included, well inside one device call. Exit status: 1 if any test failed
# (or could not start, or was not run for lack of time), 2 if only a benchmark failed, 0
# otherwise.
set -uo pipefail
# The default model is too big for one call (see prepare_bundle.sh). Its parts collect in
# $stash, which a warm machine keeps between calls; when both are there they are joined and
# checked into $stash/model.gguf. `--stash-model` only collects (call 1: build-model-parts/a
# carried); a normal run also collects what is carried (call 2: build-model-parts/b).
stash=/tmp/tandem-model
stash_model() {
  mkdir -p "$stash"
  [[ -f build-model-parts/a/model.part0 ]] && cp build-model-parts/a/model.part0 "$stash/"
  [[ -f build-model-parts/b/model.part1 ]] && cp build-model-parts/b/model.part1 build-model-parts/b/model.sha256 "$stash/"
  if [[ ! -f $stash/model.gguf && -f $stash/model.part0 && -f $stash/model.part1 ]]; then
    cat "$stash/model.part0" "$stash/model.part1" >"$stash/model.gguf"
    if [[ $(sha256sum "$stash/model.gguf" | cut -d' ' -f1) != "$(cat "$stash/model.sha256")" ]]; then
      echo "joined model's sha256 differs from model.sha256" >&2
      rm -f "$stash/model.gguf"
    fi
  fi
  ls -l "$stash"
}
if [[ ${1:-} == --stash-model ]]; then
  stash_model
  exit 0
fi
[[ $# -ge 1 ]] || { echo "usage: $0 BUNDLE_DIR | --stash-model" >&2; exit 2; }
bundle=$1
if [[ $bundle == *.tar.xz ]]; then  # prepare_bundle.sh's archive: unpack it once
  unpacked=/tmp/tandem-bundle
  rm -rf "$unpacked" && mkdir -p "$unpacked" && tar -xJf "$bundle" -C "$unpacked" || exit 1
  bundle=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
bundle=$(cd "$bundle" && pwd) || exit 1
logs=${OUT:-$(mktemp -d)}/gpu-logs
mkdir -p "$logs"
t_start=$SECONDS
budget=${BUDGET_S:-360}
# limit CAP: a step's time limit, CAP or what is left of the budget if less (<= 0: spent).
limit() {
  local left=$((budget - (SECONDS - t_start)))
  echo $((left < $1 ? left : $1))
}

libpath=$bundle/lib
# NCCL (nccl_transport_test): the Python package nvidia-nccl-cu13. nvidia.nccl is a namespace
# package (its __file__ is None): take __path__, else search the nvidia packages.
nccl=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)
if [[ -z $nccl || ! -e $nccl/lib/libnccl.so.2 ]]; then
  py_nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)
  f=$([[ -n $py_nv ]] && find "$py_nv" -maxdepth 4 -name 'libnccl.so.2' 2>/dev/null | head -1)
  nccl=""
  [[ -n $f ]] && nccl=$(dirname "$(dirname "$f")")
fi
[[ -n $nccl && -d $nccl/lib ]] && libpath+=":$nccl/lib"
# cuBLAS is not bundled (600 MB): use the machine's CUDA 13 copy.
cublas_dir=""
for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  if [[ -e $d/libcublas.so.13 ]]; then cublas_dir=$d; break; fi
done
if [[ -z $cublas_dir ]]; then
  py_nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)
  [[ -n $py_nv ]] && f=$(find "$py_nv" -maxdepth 4 -name 'libcublas.so.13' 2>/dev/null | head -1) &&
    [[ -n $f ]] && cublas_dir=$(dirname "$f")
fi
[[ -n $cublas_dir ]] && libpath+=":$cublas_dir"
export LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cuda_engine_test: the default model (models/… under the repository root, or joined from the
# stashed first part and the carried second part) and the golden data of this checkout (the
# binary's compiled-in source path is the build machine's).
model=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ -z ${TANDEM_TEST_MODEL:-} && ! -f $model ]]; then
  stash_model >/dev/null
  model=$stash/model.gguf
fi
[[ -z ${TANDEM_TEST_MODEL:-} && -f $model ]] && export TANDEM_TEST_MODEL=$model
export TANDEM_GOLDEN_DIR=${TANDEM_GOLDEN_DIR:-$PWD/tests/golden}
gpu_seen=0
{ nvidia-smi -L >/dev/null 2>&1 || [[ -e /dev/nvidia0 ]]; } && gpu_seen=1
{
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "cublas: ${cublas_dir:-NOT FOUND}"
  echo "nccl: ${nccl:-NOT FOUND}"
  echo "TANDEM_TEST_MODEL=${TANDEM_TEST_MODEL:-unset} TANDEM_GOLDEN_DIR=$TANDEM_GOLDEN_DIR"
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} 2>&1 | tee "$logs/device.txt"

summary=()
failed=0
missing=$(for exe in "$bundle"/bin/*; do ldd "$exe" 2>/dev/null | grep 'not found' | sed "s|^|${exe##*/}: |"; done)
[[ -n $missing ]] && { echo "MISSING LIBRARIES:"; echo "$missing"; } | tee -a "$logs/device.txt"
for exe in "$bundle"/bin/*_test; do
  [[ -x $exe ]] || continue
  name=${exe##*/}
  [[ $name == disagg_equality_test ]] && continue  # cluster_check.sh runs it on the GPU
  t0=$SECONDS
  # Each test takes seconds; the limit only stops a hang from eating the device budget.
  lim=$(limit 90)
  if ((lim <= 0)); then
    summary+=("$(printf '%-26s %-12s' "$name" "NOT RUN (time budget spent)")")
    failed=1
    continue
  fi
  timeout -k 10 "$lim" "$exe" --gtest_brief=1 >"$logs/$name.log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$logs/$name.log" | tail -1)
  # --gtest_brief prints no '[  FAILED  ] N tests' total, only a line per failed test.
  nfail=$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$logs/$name.log")
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$logs/$name.log" | tail -1)
  status=ok
  ((rc != 0)) && { status="FAIL(rc=$rc)"; failed=1; }
  # A skip on a machine whose driver sees a GPU means the tests never ran: count it as failed.
  if ((rc == 0 && gpu_seen && ${skipped:-0} > 0)); then status="SKIPPED!"; failed=1; fi
  summary+=("$(printf '%-26s %-12s pass=%-3s fail=%-3s skip=%-3s %4ss' "$name" "$status" \
    "${passed:-0}" "${nfail:-0}" "${skipped:-0}" "$secs")")
  if ((rc != 0)); then
    echo "---- $name (rc=$rc), last lines:"
    grep -E '^\[  FAILED  \]|Failure|error|Error|seed' "$logs/$name.log" | head -40
    tail -5 "$logs/$name.log"
  fi
done

# Benchmarks: whichever the bundle holds (a bundle made with ONLY=... may hold none).
bench_rc=0
if [[ -x $bundle/bin/kernels_bench ]]; then
  lim=$(limit 150)
  ((lim > 0)) || lim=1  # no time left: fails at once (rc 124)
  timeout -k 10 "$lim" "$bundle/bin/kernels_bench" >"$logs/kernels_bench.log" 2>&1
  bench_rc=$?
fi
# Decode steps of a synthetic Llama-3-8B-shaped model (16 GB of bf16 weights made on the GPU).
if [[ -x $bundle/bin/cuda_decode_bench ]]; then
  lim=$(limit 90)
  ((lim > 0)) || lim=1
  timeout -k 10 "$lim" "$bundle/bin/cuda_decode_bench" >"$logs/cuda_decode_bench.log" 2>&1
  rc=$?
  ((rc != 0)) && bench_rc=$rc
  echo "cuda_decode_bench rc=$rc" >>"$logs/cuda_decode_bench.log"
fi

# The serving stack on the GPU: disaggregated equality and the 2k-token TTFT.
cluster_rc=0
if [[ -x $bundle/bin/tandem-router ]]; then
  # cluster_check.sh keeps its own steps inside BUDGET_S; the outer limit is a backstop.
  lim=$(limit 100000)
  ((lim > 0)) || lim=1
  BUDGET_S=$lim timeout -k 10 $((lim + 30)) bash "$(dirname "${BASH_SOURCE[0]}")/cluster_check.sh" \
    "$bundle" "$logs/cluster" >"$logs/cluster_check.log" 2>&1
  cluster_rc=$?
  # 2: only a TTFT bench failed; anything else (1, a missing model's 127, a timeout) fails.
  ((cluster_rc != 0 && cluster_rc != 2)) && failed=1
  ((cluster_rc == 2)) && bench_rc=2
fi

echo
echo "================ GPU check summary ($((SECONDS - t_start))s, logs in $logs) ================"
grep -m1 -E '^GPU 0' "$logs/device.txt"
[[ -n $missing ]] && echo "missing libraries: $(tr '\n' ';' <<<"$missing")"
printf '%s\n' "${summary[@]}"
# Accuracy of the attention tests: case count and the three worst cases by relative L2 error.
errs=$(grep -h '^\[ error    \]' "$logs"/*_test.log 2>/dev/null | sed 's/^\[ error    \] //')
if [[ -n $errs ]]; then
  echo "attention accuracy: $(wc -l <<<"$errs") cases, worst by rel_l2:"
  awk '{for (i = 1; i <= NF; ++i) if ($i ~ /^rel_l2=/) print substr($i, 8), $0}' <<<"$errs" |
    sort -g | tail -3 | cut -d' ' -f2- | sed 's/^/  /'
fi
# The CUDA model runner: synthetic-model errors, golden continuations, decode throughput.
grep -h -E '^\[ (synth|golden|bench|graphs|kvcopy) +\]' "$logs"/cuda_engine_test.log 2>/dev/null
# KV transports: NCCL to self, CUDA IPC between processes, the prefill -> decode hand-off.
grep -h -E '^\[ (nccl|ipc) +\]' "$logs"/nccl_transport_test.log "$logs"/cuda_ipc_test.log 2>/dev/null
if [[ -f $logs/cuda_decode_bench.log ]]; then
  grep -h -E '^\[ decode +\]' "$logs/cuda_decode_bench.log"
  tail -1 "$logs/cuda_decode_bench.log" | grep -q 'rc=0$' || tail -5 "$logs/cuda_decode_bench.log"
fi
[[ -f $logs/cluster_check.log ]] && { grep -h -E '^\[ cluster +\]' "$logs/cluster_check.log"; echo "cluster_check rc=$cluster_rc"; }
echo "benchmarks rc=$bench_rc"
if [[ -f $logs/kernels_bench.log ]]; then
  sed -n '/^| kernel/,$p' "$logs/kernels_bench.log"
  ((bench_rc != 0)) && tail -5 "$logs/kernels_bench.log"
fi
# A device call brings back at most 8 files from $OUT: pack the logs into one.
if [[ -n ${OUT:-} ]] && tar -czf "$OUT/gpu-logs.tar.gz" -C "$OUT" gpu-logs; then
  rm -rf "$logs"
  echo "logs: \$OUT/gpu-logs.tar.gz"
fi
((failed)) && exit 1
((bench_rc != 0)) && exit 2
exit 0
