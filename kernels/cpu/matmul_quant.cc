// The AVX2 build of the integer kernels, activation quantization, and the choice among the
// AVX2, AVX-VNNI and AVX-512 builds.
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
constexpr bool kAvx512 = false;
}  // namespace

}  // namespace tandem::matmul_internal

#include "kernels/cpu/matmul_quant_kernels.h"

namespace tandem::matmul_internal {

void QuantizeActivations(const float* x, int64_t cols, int64_t row_begin, int64_t row_end,
                         int64_t n, bool residual, XTileBlock* xq) {
  const int64_t nb = cols / kQK;
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256i unpack = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  // int32 -> int8 with packs; the packs interleave 128-bit lanes, undone by the permute.
  auto pack = [&](const __m256i* q) {
    const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), unpack);
  };
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
      __m256i q[4], r[4];
      __m256i sum32 = _mm256_setzero_si256();
      for (int k = 0; k < 4; ++k) {
        const __m256 scaled = _mm256_mul_ps(v[k], id);
        const __m256 rounded = _mm256_round_ps(scaled, kRound);
        q[k] = _mm256_cvtps_epi32(rounded);
        if (residual) {
          // scaled - rounded is exact and within ±0.5, so r is within ±64.
          r[k] = _mm256_cvtps_epi32(_mm256_round_ps(
              _mm256_mul_ps(_mm256_sub_ps(scaled, rounded), _mm256_set1_ps(128.0f)), kRound));
          sum32 = _mm256_add_epi32(sum32, _mm256_add_epi32(_mm256_slli_epi32(q[k], 7), r[k]));
        } else {
          sum32 = _mm256_add_epi32(sum32, q[k]);
        }
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile[b].qs[j]), pack(q));
      if (residual) _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile[b].qr[j]), pack(r));
      // Integer sums below 2^24 convert exactly.
      const float sum = simd::HorizontalSum(_mm256_cvtepi32_ps(sum32));
      const float step = residual ? d / 128.0f : d;
      tile[b].d[j] = step;
      tile[b].s[j] = step * sum;
    }
    if (row == n - 1) {
      for (int jj = j + 1; jj < kTileRows; ++jj) {
        for (int64_t b = 0; b < nb; ++b) {
          tile[b].d[jj] = 0.0f;
          tile[b].s[jj] = 0.0f;
          std::memset(tile[b].qs[jj], 0, kQK);
          std::memset(tile[b].qr[jj], 0, kQK);
        }
      }
    }
  }
}

bool CpuHasAvx512Kernels() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

QuantKernel FindQuantKernel(GgmlType type, bool residual) {
  // Same results from every build (see Dot and Tile512); the wider ones just do more per
  // instruction.
  static const bool vnni = __builtin_cpu_supports("avxvnni");
  if (CpuHasAvx512Kernels()) return FindQuantKernelAvx512(type, residual);
  return vnni ? FindQuantKernelVnni(type, residual) : FindQuantKernelAvx2(type, residual);
}

QuantKernel FindQuantKernelAvx2(GgmlType type, bool residual) { return FindKernel(type, residual); }

}  // namespace tandem::matmul_internal
