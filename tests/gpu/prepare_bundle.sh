#!/usr/bin/env bash
# Builds the GPU tests and kernels_bench HERE (no GPU needed; sm_90a for H100/H200) and
# bundles them with the shared libraries they load, for tests/gpu/device_check.sh on the GPU
# machine. Usage (from anywhere): tests/gpu/prepare_bundle.sh [OUT_DIR]   (default ./gpu-bundle)
# Env: BUILD_DIR (default ./build-gpu), JOBS (default 2).
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

targets=(kernels_bench)
for src in "$root"/tests/gpu/*_test.cc "$root"/tests/gpu/*_test.cu; do
  [[ -e $src ]] || continue
  name=${src##*/}
  targets+=("${name%.*}")
done
echo "building: ${targets[*]}"
cmake --build "$build" --target "${targets[@]}" -j"$jobs"

# Stage only our executables: build/bin may hold other targets.
stage=$build/gpu-stage
rm -rf "$stage" "$out"
mkdir -p "$stage/bin"
for t in "${targets[@]}"; do cp -p "$build/bin/$t" "$stage/bin/"; done
/work/shared/device/bundle-libs.sh "$stage" "$out"
rm -f "$out"/lib/libcublas.so* "$out"/lib/libcublasLt.so*

size_kib=$(du -sk "$out" | cut -f1)
echo "bundle: $out ($((size_kib / 1024)) MiB): $(ls "$out/bin" | tr '\n' ' ')"
if ((size_kib >= 64 * 1024)); then
  echo "ERROR: bundle is over 64 MiB, too big to carry" >&2
  exit 1
fi
echo "on the GPU machine, from the repository root: tests/gpu/device_check.sh ${out#"$root"/}"
