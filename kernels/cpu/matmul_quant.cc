// The AVX2 build of the integer kernels, activation quantization, and the choice between
// this build and the AVX-VNNI one.
#include <immintrin.h>

#include <cstring>

#include "common/logging.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_math.h"

namespace tandem::matmul_internal {

const HalfToFloatTable kHalfToFloat;

HalfToFloatTable::HalfToFloatTable() {
  for (uint32_t h = 0; h < 65536; ++h) f32[h] = HalfToFloat(static_cast<uint16_t>(h));
}

namespace {
constexpr bool kVnni = false;
}  // namespace

}  // namespace tandem::matmul_internal

#include "kernels/cpu/matmul_quant_kernels.h"

namespace tandem::matmul_internal {

void QuantizeActivations(const float* x, int64_t cols, int64_t row_begin, int64_t row_end,
                         int64_t n, XTileBlock* xq) {
  const int64_t nb = cols / kQK;
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t row = row_begin; row < row_end; ++row) {
    XTileBlock* tile = xq + row / kTileRows * nb;
    const int j = static_cast<int>(row % kTileRows);
    const float* xr = x + row * cols;
    for (int64_t b = 0; b < nb; ++b) {
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps();
      for (int k = 0; k < 4; ++k) {
        v[k] = _mm256_loadu_ps(xr + b * kQK + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[k]));
      }
      const float max = simd::HorizontalMax(amax);
      const float d = max / 127.0f;
      const __m256 id = _mm256_set1_ps(d != 0.0f ? 127.0f / max : 0.0f);
      __m256i q[4];
      for (int k = 0; k < 4; ++k) {
        q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], id),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      // int32 -> int8 with packs; the packs interleave 128-bit lanes, undone by the permute.
      const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
      const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
      __m256i q8 = _mm256_packs_epi16(q01, q23);
      q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile[b].qs[j]), q8);
      const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]),
                                             _mm256_add_epi32(q[2], q[3]));
      const float sum = simd::HorizontalSum(_mm256_cvtepi32_ps(sum32));
      tile[b].d[j] = d;
      tile[b].s[j] = d * sum;
    }
    if (row == n - 1) {
      for (int jj = j + 1; jj < kTileRows; ++jj) {
        for (int64_t b = 0; b < nb; ++b) {
          tile[b].d[jj] = 0.0f;
          tile[b].s[jj] = 0.0f;
          std::memset(tile[b].qs[jj], 0, kQK);
        }
      }
    }
  }
}

QuantKernel FindQuantKernel(GgmlType type) {
  // Same results either way (see Dot); VNNI does a block's dot product in one instruction.
  static const bool vnni = __builtin_cpu_supports("avxvnni");
  return vnni ? FindQuantKernelVnni(type) : FindQuantKernelAvx2(type);
}

QuantKernel FindQuantKernelAvx2(GgmlType type) {
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
