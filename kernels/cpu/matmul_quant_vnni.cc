// The AVX-VNNI build of the integer kernels (see matmul_quant_kernels.h). Only called where
// the CPU reports AVX-VNNI; the rest of the project stays at x86-64-v3.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "common/logging.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_math.h"

#pragma GCC target("avxvnni")

namespace tandem::matmul_internal {
namespace {
constexpr bool kVnni = true;
constexpr bool kAvx512 = false;
}  // namespace
}  // namespace tandem::matmul_internal

#include "kernels/cpu/matmul_quant_kernels.h"

namespace tandem::matmul_internal {

QuantKernel FindQuantKernelVnni(GgmlType type, bool residual) { return FindKernel(type, residual); }

}  // namespace tandem::matmul_internal
