// The AVX-512 build of the integer kernels (see matmul_quant_kernels.h): two activation rows
// per instruction for tiles of 2 and 4 rows. Only called where the CPU reports AVX-512 F, BW,
// VL and VNNI; the rest of the project stays at x86-64-v3.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/logging.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_math.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and trip this warning on
// every use (a known false positive, fixed in later GCC).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace tandem::matmul_internal {
namespace {
// The 256-bit tiles here (1 and 3 rows) take the AVX2 dot: CPUs with AVX-512 VNNI need not
// have the VEX-encoded AVX-VNNI.
constexpr bool kVnni = false;
constexpr bool kAvx512 = true;
}  // namespace
}  // namespace tandem::matmul_internal

#include "kernels/cpu/matmul_quant_kernels.h"

namespace tandem::matmul_internal {

QuantKernel FindQuantKernelAvx512(GgmlType type, bool residual) {
  return FindKernel(type, residual);
}

}  // namespace tandem::matmul_internal
