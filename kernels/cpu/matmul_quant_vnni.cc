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
}  // namespace
}  // namespace tandem::matmul_internal

#include "kernels/cpu/matmul_quant_kernels.h"

namespace tandem::matmul_internal {

QuantKernel FindQuantKernelVnni(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
      return &Kernel<Q4_0Format>;
    case GgmlType::kQ4_1:
      return &Kernel<Q4_1Format>;
    case GgmlType::kQ8_0:
      return &Kernel<Q8_0Format>;
    case GgmlType::kQ6_K:
      return &Kernel<Q6_KFormat>;
    default:
      return nullptr;
  }
}

}  // namespace tandem::matmul_internal
