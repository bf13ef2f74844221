#!/usr/bin/env bash
# Build llama.cpp (CPU only) as tandem's benchmark peer, OUTSIDE the repository.
#
# The source is the llama.cpp tree vendored in the llama-cpp-python sdist on PyPI
# (PyPI is the only registry reachable from the project's machines). Nothing from
# llama.cpp is committed to tandem.
#
# Usage: bench/llama_cpp/build.sh
# Env:   TANDEM_HOME        default ~/.cache/tandem
#        LLAMA_CPP_DIR      default $TANDEM_HOME/llama.cpp
#        LLAMA_CPP_PY_VER   default 0.3.36 (llama-cpp-python version whose vendored llama.cpp is built)
#        JOBS               default 2
#        LLAMA_CPP_AMX      default 0: compile WITHOUT Intel AMX even when -march=native offers it.
#                           On the project's (Firecracker VM, Sapphire Rapids) machines ggml's AMX
#                           matmul dies with a general protection fault on the first prefill
#                           (seen with 0.3.36 and SmolLM2 Q4_1). Set 1 to keep AMX.
#        PIP                default: python3 -m pip
# Idempotent: if the three binaries exist for the pinned version it only prints their paths.
# Prints, last, three lines:  LLAMA_BENCH=<path>  LLAMA_BATCHED_BENCH=<path>  LLAMA_SERVER=<path>
set -euo pipefail

TANDEM_HOME="${TANDEM_HOME:-$HOME/.cache/tandem}"
LLAMA_CPP_DIR="${LLAMA_CPP_DIR:-$TANDEM_HOME/llama.cpp}"
VER="${LLAMA_CPP_PY_VER:-0.3.36}"
JOBS="${JOBS:-2}"
PIP="${PIP:-python3 -m pip}"

SRC_PARENT="$LLAMA_CPP_DIR/src-$VER"
SRC="$SRC_PARENT/llama.cpp"
BUILD="$LLAMA_CPP_DIR/build-$VER"
BIN="$BUILD/bin"
STAMP="$BUILD/.tandem-built"
AMX="${LLAMA_CPP_AMX:-0}"

EXTRA_FLAGS=""
if [[ "$AMX" != 1 ]]; then
  # Only pass the flags when the compiler knows them (GCC >= 11, Clang >= 11).
  if echo | c++ -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -x c++ -E - >/dev/null 2>&1; then
    EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
fi
CONFIG_ID="llama-cpp-python $VER sdist; native; amx=$AMX; flags='$EXTRA_FLAGS'; server=1"

print_paths() {
  echo "LLAMA_BENCH=$BIN/llama-bench"
  echo "LLAMA_BATCHED_BENCH=$BIN/llama-batched-bench"
  echo "LLAMA_SERVER=$BIN/llama-server"
}

if [[ -f "$STAMP" && -x "$BIN/llama-bench" && -x "$BIN/llama-batched-bench" && -x "$BIN/llama-server" ]] \
   && [[ "$(head -1 "$STAMP")" == "$CONFIG_ID" ]]; then
  echo "llama.cpp already built ($(tr '\n' ' ' < "$STAMP"))" >&2
  print_paths
  exit 0
fi

for tool in cmake tar; do
  command -v "$tool" >/dev/null || { echo "build.sh: '$tool' not found (apt-get install cmake)" >&2; exit 1; }
done
command -v c++ >/dev/null || { echo "build.sh: no C++ compiler (apt-get install build-essential)" >&2; exit 1; }

mkdir -p "$LLAMA_CPP_DIR"

# 1. Fetch the sdist (source only, no deps).
DL="$LLAMA_CPP_DIR/sdist"
SDIST="$(ls "$DL"/llama_cpp_python-"$VER".tar.gz 2>/dev/null || true)"
if [[ -z "$SDIST" ]]; then
  mkdir -p "$DL"
  echo "downloading llama-cpp-python==$VER sdist" >&2
  $PIP download --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$DL" >&2
  SDIST="$(ls "$DL"/llama_cpp_python-"$VER".tar.gz)"
fi

# 2. Extract only vendor/llama.cpp from it.
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
  rm -rf "$SRC_PARENT" "$SRC_PARENT.tmp"
  mkdir -p "$SRC_PARENT.tmp"
  tar -xzf "$SDIST" -C "$SRC_PARENT.tmp" --wildcards "llama_cpp_python-$VER/vendor/llama.cpp/*"
  mkdir -p "$SRC_PARENT"
  mv "$SRC_PARENT.tmp/llama_cpp_python-$VER/vendor/llama.cpp" "$SRC"
  rm -rf "$SRC_PARENT.tmp"
fi

# 3. Configure: Release, CPU only, no curl/tests/examples. The server is built without its web
#    UI: building it needs npm and the prebuilt one is downloaded from Hugging Face, neither of
#    which the project's machines reach (the HTTP API is all the benchmarks use).
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_COMMON=ON \
  -DCMAKE_C_FLAGS="$EXTRA_FLAGS" -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" >&2

# 4. Build only the two benchmark tools and the server (an incremental build after the first).
cmake --build "$BUILD" --config Release -j "$JOBS" --target llama-bench llama-batched-bench llama-server >&2

[[ -x "$BIN/llama-bench" && -x "$BIN/llama-batched-bench" && -x "$BIN/llama-server" ]] || {
  echo "build.sh: build finished but binaries are missing under $BIN" >&2; exit 1; }

rm -f "$STAMP"
printf '%s\nbuilt %s\n' "$CONFIG_ID" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$STAMP"
print_paths
