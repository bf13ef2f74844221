#!/usr/bin/env bash
# Builds the GPU tests and kernels_bench HERE (no GPU needed; sm_90a for H100/H200) and
# bundles them with the shared libraries they load, for tests/gpu/device_check.sh on the GPU
# machine. Usage (from anywhere): tests/gpu/prepare_bundle.sh [OUT_DIR]   (default ./gpu-bundle)
# Env: BUILD_DIR (default ./build-gpu), JOBS (default 2), ONLY (space-separated targets to
# bundle instead of all, e.g. ONLY="cuda_engine_test cuda_ipc_test nccl_transport_test
# cuda_decode_bench": the binaries of the second device call, see below), CLUSTER=1 (add the
# router, both workers, the CLI and disagg_equality_test for tests/gpu/cluster_check.sh;
# they bring gRPC's libraries).
#
# NOTE: the default model (SmolLM2-135M Q4_1, 94 MiB, for cuda_engine_test) is more than one
# device call may carry (64 MiB in all). When it is found ($TANDEM_TEST_MODEL or the cache),
# it is split into build-model-parts/a (54 MiB) and build-model-parts/b (40 MiB), sized so
# that each call keeps ~7 MiB to spare: call 1 carries a and runs
# `tests/gpu/device_check.sh --stash-model` (copies it to /tmp on the device machine, which
# keeps it while warm: 30 s); call 2 carries b and the CLUSTER=1 archive (gpu-bundle.tar.xz,
# ~9 MiB) and runs `tests/gpu/device_check.sh gpu-bundle.tar.xz`, which joins the model.
#
# NOTE: cuBLAS (libcublas + libcublasLt, ~600 MB) is left out of the bundle; device_check.sh
# finds the GPU machine's own CUDA 13 copy.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
out=${1:-$root/gpu-bundle}
jobs=${JOBS:-2}
mkdir -p "$build"
log=$build/configure.log

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a >"$log" 2>&1 ||
  { tail -30 "$log"; exit 1; }

targets=(kernels_bench cuda_decode_bench)
for src in "$root"/tests/gpu/*_test.cc "$root"/tests/gpu/*_test.cu; do
  [[ -e $src ]] || continue
  name=${src##*/}
  targets+=("${name%.*}")
done
if [[ -n ${ONLY:-} ]]; then read -r -a targets <<<"$ONLY"; fi
if [[ ${CLUSTER:-0} == 1 ]]; then
  targets+=(tandem tandem-router tandem-prefill tandem-decode disagg_equality_test)
fi
echo "building: ${targets[*]}"
cmake --build "$build" --target "${targets[@]}" -j"$jobs"

# Stage only our executables: build/bin may hold other targets.
stage=$build/gpu-stage
rm -rf "$stage" "$out"
mkdir -p "$stage/bin"
for t in "${targets[@]}"; do cp -p "$build/bin/$t" "$stage/bin/"; done
# Host symbols are not needed there (~0.2 MiB a binary; the device code is most of the rest).
strip --strip-unneeded "$stage"/bin/*
/work/shared/device/bundle-libs.sh "$stage" "$out"
rm -f "$out"/lib/libcublas.so* "$out"/lib/libcublasLt.so*

# The binaries are mostly the same CUDA fat binary, once per executable: with a dictionary
# larger than the whole folder xz stores it once (113 MiB -> 9 MiB; xz's default 8 MiB
# dictionary, smaller than one binary, gave 22). device_check.sh unpacks it (~130 MiB of
# memory to decompress).
tar -cf - -C "$(dirname "$out")" "$(basename "$out")" |
  xz -9 --lzma2=preset=9,dict=128MiB -T1 >"$out.tar.xz"
size_kib=$(du -sk "$out.tar.xz" | cut -f1)
echo "bundle: $out ($(du -sm "$out" | cut -f1) MiB; $out.tar.xz $((size_kib / 1024)) MiB):" \
  "$(ls "$out/bin" | tr '\n' ' ')"
if ((size_kib >= 64 * 1024)); then
  echo "ERROR: bundle is over 64 MiB even compressed, too big to carry" >&2
  exit 1
fi

model=${TANDEM_TEST_MODEL:-${TANDEM_HOME:-$HOME/.cache/tandem}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
parts=$root/build-model-parts
if [[ -f $model ]]; then
  rm -rf "$parts"
  mkdir -p "$parts/a" "$parts/b"
  head -c $((54 << 20)) "$model" >"$parts/a/model.part0"
  tail -c +$(((54 << 20) + 1)) "$model" >"$parts/b/model.part1"
  sha256sum "$model" | cut -d' ' -f1 >"$parts/b/model.sha256"
  echo "model: $model split into build-model-parts/a ($(du -sm "$parts/a" | cut -f1) MiB)" \
    "and build-model-parts/b ($(du -sm "$parts/b" | cut -f1) MiB)"
else
  echo "model not found at $model: cuda_engine_test's golden and bench tests will fail there"
fi
# What one device call carries: the working tree (tracked and untracked-not-ignored files),
# plus the carried paths; at most 64 MiB.
# Apparent sizes (du -k rounds every small file up to a 4 KiB block); a tracked file deleted
# in the working tree makes du fail (pipefail), not the script.
tree_kib=$(cd "$root" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 || true)
tree_kib=$((${tree_kib:-0} / 1024))
b_kib=$( [[ -d $parts/b ]] && du -sk "$parts/b" | cut -f1 || echo 0)
total_kib=$((tree_kib + size_kib + b_kib))
echo "a call carrying ${out#"$root"/}.tar.xz and build-model-parts/b: tree $((tree_kib / 1024)) MiB + bundle" \
  "$((size_kib / 1024)) MiB + b $((b_kib / 1024)) MiB = $((total_kib / 1024)) MiB of 64" \
  "($(( (64 * 1024 - total_kib) / 1024 )) MiB to spare)"
((total_kib >= 64 * 1024)) && echo "WARNING: too big for one call with b: bundle fewer binaries (ONLY=...)" >&2
echo "on the GPU machine, from the repository root: tests/gpu/device_check.sh ${out#"$root"/}.tar.xz"
