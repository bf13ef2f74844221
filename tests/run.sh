#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (Debian packages), builds
# tandem, pulls the default model, runs ctest (GPU-labelled tests only where a GPU is present),
# then builds the libFuzzer targets with clang and runs each for a bounded time.
# Quiet on success: prints the ctest summaries; on failure, the log of the failing step.
#
#   tests/run.sh                 # everything
#   TANDEM_FUZZ_SECONDS=10 tests/run.sh
#   TANDEM_SKIP_FUZZ=1 tests/run.sh
#   TANDEM_SKIP_SANITIZE=1 tests/run.sh   # no ASan+UBSan build of the async code's tests
#   TANDEM_SKIP_PYTHON=1 tests/run.sh   # no venvs: no Python client, OpenAI SDK or HF-model tests
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${TANDEM_BUILD_DIR:-$root/build}
fuzz_build=${TANDEM_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${TANDEM_JOBS:-$(nproc)}
logs=$build/logs
mkdir -p "$logs"

# step NAME COMMAND...: runs quietly; prints the log and exits on failure.
step() {
  local name=$1; shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    echo "tests/run.sh: step '$name' failed; its log ($logs/$name.log):" >&2
    tail -n 200 "$logs/$name.log" >&2
    exit 1
  fi
}

"$root/deploy/install_deps.sh"

step configure cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
step build cmake --build "$build" -j "$jobs"
step model-pull "$build/bin/tandem" model pull

# The default model as a Hugging Face directory (fp32 safetensors, config.json, tokenizer.json),
# converted by tools/gguf_to_hf.py in its own venv: hf_model_test runs it against the GGUF.
# Made once (again when the converter or the model changes). TANDEM_SKIP_PYTHON=1 skips it
# (the test then skips).
if [[ ${TANDEM_SKIP_PYTHON:-0} != 1 ]]; then
  hf_venv=$build/hf-venv
  hf_model=$build/hf-smollm2-f32
  gguf=${TANDEM_TEST_MODEL:-${TANDEM_HOME:-$HOME/.cache/tandem}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
  [[ -x $hf_venv/bin/python ]] || step hf-venv python3 -m venv "$hf_venv"
  step hf-install "$hf_venv/bin/pip" install -q -r "$root/tests/hf/requirements.txt"
  if [[ ! $hf_model/config.json -nt $root/tools/gguf_to_hf.py || ! $hf_model/config.json -nt $gguf ]]; then
    step hf-convert "$hf_venv/bin/python" "$root/tools/gguf_to_hf.py" "$gguf" "$hf_model" --dtype f32 --self-check
  fi
  export TANDEM_TEST_HF_MODEL=$hf_model
fi

gpu_filter=(-LE gpu)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu_filter=(); fi

ctest_log=$logs/ctest.log
if ! ctest --test-dir "$build" "${gpu_filter[@]}" --output-on-failure -j "$jobs" \
    >"$ctest_log" 2>&1; then
  cat "$ctest_log"
  exit 1
fi
grep -E '^[0-9]+% tests passed|tests passed, ' "$ctest_log"

# The Python client package, built from proto/ by pip in its own venv, against a stand-in
# router (clients/python/tests), and the OpenAI SDK tests. TANDEM_SKIP_PYTHON=1 skips them.
if [[ ${TANDEM_SKIP_PYTHON:-0} != 1 ]]; then
  venv=$build/pyclient-venv
  [[ -x $venv/bin/python ]] || step python-venv python3 -m venv "$venv"
  step python-client-install "$venv/bin/pip" install -q "$root/clients/python"
  step python-client-test "$venv/bin/python" -m unittest discover -s "$root/clients/python/tests"
  echo "python client: $(grep -Eo 'Ran [0-9]+ tests' "$logs/python-client-test.log"), OK"

  # The official OpenAI SDK against the HTTP API of a real router and workers (tests/openai):
  # every endpoint and error path, then 256 concurrent streaming clients for 60 s.
  oa_venv=$build/openai-venv
  [[ -x $oa_venv/bin/python ]] || step openai-venv python3 -m venv "$oa_venv"
  step openai-install "$oa_venv/bin/pip" install -q -r "$root/tests/openai/requirements.txt"
  step openai-sdk-test env TANDEM_BIN_DIR="$build/bin" "$oa_venv/bin/python" -m unittest \
    discover -s "$root/tests/openai" -p 'test_*.py'
  echo "openai sdk: $(grep -Eo 'Ran [0-9]+ tests' "$logs/openai-sdk-test.log"), OK;" \
    "$(grep -Eo '[0-9]+ clients for [0-9]+ s: .*' "$logs/openai-sdk-test.log")"
fi

# The asynchronous code (the router's calls, the decode worker's streams, their timers and
# serializers) under AddressSanitizer + UBSan with leak checks: its unit tests and the
# workers' tests against the real model. Any report fails the step. TANDEM_SKIP_SANITIZE=1
# skips it.
if [[ ${TANDEM_SKIP_SANITIZE:-0} != 1 ]]; then
  asan_build=${TANDEM_ASAN_BUILD_DIR:-$root/build-asan}
  asan_tests=(router_test prefill_gate_test timer_queue_test serializer_test workers_test)
  step asan-configure cmake -S "$root" -B "$asan_build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTANDEM_SANITIZE=ON -DTANDEM_WITH_CUDA=OFF
  step asan-build cmake --build "$asan_build" -j "$jobs" --target "${asan_tests[@]}"
  for t in "${asan_tests[@]}"; do
    step "asan-$t" env ASAN_OPTIONS=detect_leaks=1 "$asan_build/bin/$t" --gtest_brief=1
  done
  echo "sanitizers: ${asan_tests[*]} passed under ASan+UBSan"
fi

if [[ ${TANDEM_SKIP_FUZZ:-0} != 1 ]]; then
  step fuzz-configure env CC=clang CXX=clang++ cmake -S "$root" -B "$fuzz_build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DTANDEM_FUZZ=ON -DTANDEM_BUILD_TESTS=OFF \
    -DTANDEM_WITH_CUDA=OFF -DTANDEM_WITH_GRPC=OFF \
    -DTANDEM_FUZZ_SECONDS="${TANDEM_FUZZ_SECONDS:-30}"
  step fuzz-build cmake --build "$fuzz_build" -j "$jobs" --target gguf_fuzzer tokenizer_fuzzer http_parser_fuzzer safetensors_fuzzer \
    openai_request_fuzzer
  fuzz_log=$logs/fuzz.log
  if ! ctest --test-dir "$fuzz_build" -L fuzz --output-on-failure >"$fuzz_log" 2>&1; then
    cat "$fuzz_log"
    exit 1
  fi
  grep -E '^[0-9]+% tests passed|tests passed, ' "$fuzz_log"
fi
