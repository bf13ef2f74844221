// Internal to tandem_kernels_cpu: the integer dot-product kernels, GGML weight blocks
// against 8-bit activation tiles. Included by exactly three files, which compile it for
// three instruction sets: matmul_quant.cc (AVX2), matmul_quant_vnni.cc (AVX2 + AVX-VNNI, chosen
// at run time where the CPU has it), and matmul_quant_avx512.cc (AVX-512 with VNNI).
// Everything here has internal linkage so the builds never merge; the includer defines
// kVnni and kAvx512 and includes the system headers first.
//
// For a weight row and an activation row, the product is accumulated over 32-element
// blocks b as
//   acc += float(Σ_k wq[k] * xq[k]) * (dw_b * dx_b)      (8 fp32 lanes, summed at the end)
//   off += m_b * s_b                                      (weights with an offset: Q4_0/Q4_1)
// where xq is the activation's 8-bit level q, or 128 q + r with residuals (see XTileBlock).
// Every (weight row, activation row) pair runs exactly this sequence whatever the tile
// shape, so a row's result does not depend on how many rows are batched with it.
#ifndef TANDEM_KERNELS_CPU_MATMUL_QUANT_KERNELS_H_
#define TANDEM_KERNELS_CPU_MATMUL_QUANT_KERNELS_H_

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/logging.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_math.h"

namespace tandem::matmul_internal {
namespace {  // NOLINT: internal linkage on purpose, see above.

// Lane j of v (v holds d[0..3] in both 128-bit halves) broadcast to all 8 lanes.
inline __m256 Lane(__m256 v, int j) {
  switch (j) {
    case 0:
      return _mm256_shuffle_ps(v, v, 0x00);
    case 1:
      return _mm256_shuffle_ps(v, v, 0x55);
    case 2:
      return _mm256_shuffle_ps(v, v, 0xaa);
    default:
      return _mm256_shuffle_ps(v, v, 0xff);
  }
}

inline const float& Half(uint16_t h) { return kHalfToFloat.f32[h]; }

// One unpacked 32-element weight block.
struct UnpackedBlock {
  __m256i q;       // levels, as the first (unsigned) operand of maddubs
  __m256i sign;    // for signed formats: the signed levels, whose signs move onto x
  __m256i scales;  // int16 weights for the pairwise madd (Q6_K sub-block scales, else 1)
  __m256 d;        // block scale, broadcast
  float m;         // offset per unit of Σx (Q4_1's m, Q4_0's -8·d)
};

inline __m256i UnpackNibbles(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0f));
}

struct Q4_0Format {
  static constexpr bool kOffset = true;
  static constexpr bool kSigned = false;
  static int64_t RowBytes(int64_t cols) { return cols / kQK * sizeof(BlockQ4_0); }
  static UnpackedBlock Load(const uint8_t* row, int64_t b) {
    const BlockQ4_0& blk = reinterpret_cast<const BlockQ4_0*>(row)[b];
    UnpackedBlock u;
    u.q = UnpackNibbles(blk.qs);
    u.d = _mm256_broadcast_ss(&Half(blk.d));
    u.m = -8.0f * Half(blk.d);
    return u;
  }
};

struct Q4_1Format {
  static constexpr bool kOffset = true;
  static constexpr bool kSigned = false;
  static int64_t RowBytes(int64_t cols) { return cols / kQK * sizeof(BlockQ4_1); }
  static UnpackedBlock Load(const uint8_t* row, int64_t b) {
    const BlockQ4_1& blk = reinterpret_cast<const BlockQ4_1*>(row)[b];
    UnpackedBlock u;
    u.q = UnpackNibbles(blk.qs);
    u.d = _mm256_broadcast_ss(&Half(blk.d));
    u.m = Half(blk.m);
    return u;
  }
};

struct Q8_0Format {
  static constexpr bool kOffset = false;
  static constexpr bool kSigned = true;
  static int64_t RowBytes(int64_t cols) { return cols / kQK * sizeof(BlockQ8_0); }
  static UnpackedBlock Load(const uint8_t* row, int64_t b) {
    const BlockQ8_0& blk = reinterpret_cast<const BlockQ8_0*>(row)[b];
    UnpackedBlock u;
    u.sign = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs));
    u.q = _mm256_sign_epi8(u.sign, u.sign);
    u.d = _mm256_broadcast_ss(&Half(blk.d));
    return u;
  }
};

// A 32-element activation block b covers elements 32*(b%8) .. +32 of super-block b/8; see
// DequantizeQ6_K in quant.cc for where their bits and scales live.
struct Q6_KFormat {
  static constexpr bool kOffset = false;
  static constexpr bool kSigned = true;
  static int64_t RowBytes(int64_t cols) { return cols / kQK_K * sizeof(BlockQ6_K); }
  static UnpackedBlock Load(const uint8_t* row, int64_t b) {
    const BlockQ6_K& blk = reinterpret_cast<const BlockQ6_K*>(row)[b / 8];
    const int half = static_cast<int>(b % 8) / 4, k = static_cast<int>(b % 4);
    const __m256i ql =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * half + 32 * (k & 1)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * half));
    const __m256i mask4 = _mm256_set1_epi8(0x0f);
    const __m256i low = _mm256_and_si256(k >= 2 ? _mm256_srli_epi16(ql, 4) : ql, mask4);
    const __m128i shift = _mm_cvtsi32_si128(2 * k);
    const __m256i high =
        _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, shift), _mm256_set1_epi8(0x03)), 4);
    UnpackedBlock u;
    u.sign = _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(32));
    u.q = _mm256_sign_epi8(u.sign, u.sign);
    const int8_t* sc = blk.scales + 8 * half + 2 * k;
    u.scales = _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
    u.d = _mm256_broadcast_ss(&Half(blk.d));
    return u;
  }
};

// acc + Σ over each group of 4 bytes of w·x, as 8 int32 lanes. maddubs+madd and VNNI's
// dpbusd give the same integers here (no int16 pair sum can saturate: |w| <= 128,
// |x| <= 127), so the builds of the kernels agree bit for bit.
template <class F>
inline __m256i DotAcc(__m256i acc, const UnpackedBlock& w, __m256i xq) {
  const __m256i x = F::kSigned ? _mm256_sign_epi8(xq, w.sign) : xq;
  if constexpr (std::is_same_v<F, Q6_KFormat>) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w.q, x), w.scales));
  } else if constexpr (kVnni) {
    return _mm256_dpbusd_avx_epi32(acc, w.q, x);
  } else {
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(w.q, x), _mm256_set1_epi16(1)));
  }
}

template <class F>
inline __m256i Dot(const UnpackedBlock& w, __m256i xq) {
  if constexpr (!std::is_same_v<F, Q6_KFormat> && !kVnni) {
    return _mm256_madd_epi16(
        _mm256_maddubs_epi16(w.q, F::kSigned ? _mm256_sign_epi8(xq, w.sign) : xq),
        _mm256_set1_epi16(1));
  } else {
    return DotAcc<F>(_mm256_setzero_si256(), w, xq);
  }
}

// Software prefetch of the weights this many rows ahead: the decode step streams ~100 MB of
// weights from DRAM, and the hardware prefetcher alone leaves the kernel waiting on it.
constexpr int64_t kPrefetchRows = 8;

// NW weight rows starting at r against the first NX rows of the tile. NW > 1 only adds
// independent accumulator chains (latency hiding); it does not change any pair's sums.
// The integer dot of a weight block with activation row j of the block: Σ w·q, or with
// residuals Σ w·(128 q + r) = (Σ w·q) · 128 + Σ w·r. Exact integers in every build (the
// largest, Q6_K's, stays below 2^31), so the builds agree bit for bit.
template <class F, bool kResidual>
inline __m256i RowDot(const UnpackedBlock& u, const XTileBlock& xb, int j) {
  const __m256i dot = Dot<F>(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs[j])));
  if constexpr (!kResidual) {
    return dot;
  } else {
    return DotAcc<F>(_mm256_slli_epi32(dot, 7), u,
                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qr[j])));
  }
}

template <class F, int NX, int NW, bool kResidual>
inline void Tile(const uint8_t* w_row, int64_t row_bytes, int64_t nb, const XTileBlock* xt,
                 float* y, int64_t y_stride) {
  __m256 acc[NW][NX];
  __m128 off[NW];
  for (int i = 0; i < NW; ++i) {
    off[i] = _mm_setzero_ps();
    for (int j = 0; j < NX; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  const int64_t pf_step = row_bytes / nb;  // ~bytes per block (Q6_K's 26.25 rounds down)
  for (int64_t b = 0; b < nb; ++b) {
    const XTileBlock& xb = xt[b];
    for (int i = 0; i < NW; ++i) {
      const uint8_t* row = w_row + i * row_bytes;
      // Also for wide tiles: at 4 rows a Q8_0 block (34 bytes) is done in ~7 cycles, faster
      // than one core's share of DRAM delivers it.
      _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchRows * row_bytes + b * pf_step),
                   _MM_HINT_T0);
      const UnpackedBlock u = F::Load(row, b);
      if constexpr (F::kOffset) {
        off[i] = _mm_fmadd_ps(_mm_set1_ps(u.m), _mm_loadu_ps(xb.s), off[i]);
      }
      if constexpr (NX == 1) {
        // Same product dw·dx as the shuffle below gives, formed without the shuffle port.
        const __m256 scale = _mm256_mul_ps(u.d, _mm256_broadcast_ss(&xb.d[0]));
        acc[i][0] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(RowDot<F, kResidual>(u, xb, 0)), scale, acc[i][0]);
      } else {
        const __m256 scale =
            _mm256_mul_ps(u.d, _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xb.d)));
        for (int j = 0; j < NX; ++j) {
          acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(RowDot<F, kResidual>(u, xb, j)),
                                      Lane(scale, j), acc[i][j]);
        }
      }
    }
  }
  for (int i = 0; i < NW; ++i) {
    alignas(16) float o[kTileRows];
    _mm_store_ps(o, off[i]);
    for (int j = 0; j < NX; ++j) y[j * y_stride + i] = simd::HorizontalSum(acc[i][j]) + o[j];
  }
}

// The AVX-512 build (kAvx512): one 512-bit register carries two activation rows of the tile (rows j
// and j + 1 are adjacent in XTileBlock::qs), each in its own 256-bit half, against the same
// weight block duplicated into both halves. Every half runs exactly the 256-bit sequence of
// Tile (same integer dot, same dw·dx product, same fma, same final sum), so this build agrees
// with the others bit for bit while doing two pairs per instruction.
template <class F>
inline __m512i Dot512Acc(__m512i acc, __m512i q, __m512i sign, __m512i scales, __m512i xq) {
  if constexpr (F::kSigned) {
    // AVX-512 has no sign_epi8: negate x where w < 0 (where w == 0, |w| = 0 zeroes it anyway).
    xq = _mm512_mask_sub_epi8(xq, _mm512_movepi8_mask(sign), _mm512_setzero_si512(), xq);
  }
  if constexpr (std::is_same_v<F, Q6_KFormat>) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(q, xq), scales));
  } else {
    return _mm512_dpbusd_epi32(acc, q, xq);
  }
}

// NP pairs of activation rows: pairs 0-1 from the tile at xt, pairs 2-3 from the next tile
// (xt + nb), so eight rows share each unpacked weight block.
template <class F, int NP, int NW, bool kResidual>
inline void Tile512(const uint8_t* w_row, int64_t row_bytes, int64_t nb, const XTileBlock* xt,
                    float* y, int64_t y_stride) {
  constexpr int NT = (NP + 1) / 2;  // activation tiles touched
  __m512 acc[NW][NP];
  __m128 off[NW][NT];
  for (int i = 0; i < NW; ++i) {
    for (int t = 0; t < NT; ++t) off[i][t] = _mm_setzero_ps();
    for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
  }
  // Lane k of half h of pair p takes dw·d[2 (p % 2) + h] of its tile.
  const __m512i pick[2] = {_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                           _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2)};
  const int64_t pf_step = row_bytes / nb;
  for (int64_t b = 0; b < nb; ++b) {
    const XTileBlock* xb[NT];
    __m512 dx[NT];
    for (int t = 0; t < NT; ++t) {
      xb[t] = xt + t * nb + b;
      dx[t] = _mm512_broadcast_f32x4(_mm_loadu_ps(xb[t]->d));
    }
    for (int i = 0; i < NW; ++i) {
      const uint8_t* row = w_row + i * row_bytes;
      _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchRows * row_bytes + b * pf_step),
                   _MM_HINT_T0);
      const UnpackedBlock u = F::Load(row, b);
      const __m512 dw = _mm512_broadcastss_ps(_mm256_castps256_ps128(u.d));
      if constexpr (F::kOffset) {
        for (int t = 0; t < NT; ++t) {
          off[i][t] = _mm_fmadd_ps(_mm_set1_ps(u.m), _mm_loadu_ps(xb[t]->s), off[i][t]);
        }
      }
      const __m512i q = _mm512_broadcast_i64x4(u.q);
      const __m512i sign = F::kSigned ? _mm512_broadcast_i64x4(u.sign) : q;
      const __m512i scales = std::is_same_v<F, Q6_KFormat> ? _mm512_broadcast_i64x4(u.scales) : q;
      for (int t = 0; t < NT; ++t) {
        const __m512 scale = _mm512_mul_ps(dw, dx[t]);
        for (int p = 2 * t; p < std::min(NP, 2 * t + 2); ++p) {
          __m512i dot = Dot512Acc<F>(_mm512_setzero_si512(), q, sign, scales,
                                     _mm512_loadu_si512(xb[t]->qs[2 * (p % 2)]));
          if constexpr (kResidual) {  // see RowDot
            dot = Dot512Acc<F>(_mm512_slli_epi32(dot, 7), q, sign, scales,
                               _mm512_loadu_si512(xb[t]->qr[2 * (p % 2)]));
          }
          acc[i][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                      _mm512_permutexvar_ps(pick[p % 2], scale), acc[i][p]);
        }
      }
    }
  }
  for (int i = 0; i < NW; ++i) {
    alignas(16) float o[NT][kTileRows];
    for (int t = 0; t < NT; ++t) _mm_store_ps(o[t], off[i][t]);
    for (int p = 0; p < NP; ++p) {
      const __m256 lo = _mm512_castps512_ps256(acc[i][p]);
      const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][p]), 1));
      const float* op = o[p / 2] + 2 * (p % 2);
      y[(2 * p) * y_stride + i] = simd::HorizontalSum(lo) + op[0];
      y[(2 * p + 1) * y_stride + i] = simd::HorizontalSum(hi) + op[1];
    }
  }
}

template <class F, int NX, int NW, bool kResidual>
void Rows(const WeightView& w, int64_t r_begin, int64_t r_end, const XTileBlock* xt, float* y,
          int64_t y_stride) {
  const int64_t row_bytes = F::RowBytes(w.cols);
  const int64_t nb = w.cols / kQK;
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  int64_t r = r_begin;
  if constexpr (kAvx512 && (NX == 2 || NX == 4 || NX == 8)) {
    for (; r + NW <= r_end; r += NW) {
      Tile512<F, NX / 2, NW, kResidual>(data + r * row_bytes, row_bytes, nb, xt, y + r, y_stride);
    }
    for (; r < r_end; ++r) {
      Tile512<F, NX / 2, 1, kResidual>(data + r * row_bytes, row_bytes, nb, xt, y + r, y_stride);
    }
    return;
  }
  for (; r + NW <= r_end; r += NW) {
    Tile<F, NX, NW, kResidual>(data + r * row_bytes, row_bytes, nb, xt, y + r, y_stride);
  }
  for (; r < r_end; ++r) {
    Tile<F, NX, 1, kResidual>(data + r * row_bytes, row_bytes, nb, xt, y + r, y_stride);
  }
}

template <class F, bool kResidual>
void Kernel(const WeightView& w, int64_t r_begin, int64_t r_end, const XTileBlock* xt, int nx,
            float* y, int64_t y_stride) {
  switch (nx) {
    case 1:
      return Rows<F, 1, 4, kResidual>(w, r_begin, r_end, xt, y, y_stride);
    case 2:
      return Rows<F, 2, 2, kResidual>(w, r_begin, r_end, xt, y, y_stride);
    case 3:
      return Rows<F, 3, 1, kResidual>(w, r_begin, r_end, xt, y, y_stride);
    case 4:
      // 32 registers give the AVX-512 build room for two weight rows.
      return Rows < F, 4, kAvx512 ? 2 : 1, kResidual > (w, r_begin, r_end, xt, y, y_stride);
    case 8:  // two tiles
      if constexpr (kAvx512) {
        return Rows<F, 8, 2, kResidual>(w, r_begin, r_end, xt, y, y_stride);
      } else {
        const int64_t nb = w.cols / kQK;
        Rows<F, 4, 1, kResidual>(w, r_begin, r_end, xt, y, y_stride);
        return Rows<F, 4, 1, kResidual>(w, r_begin, r_end, xt + nb, y + kTileRows * y_stride,
                                        y_stride);
      }
  }
  LOG(FATAL) << "tile of " << nx << " rows";
}

template <class F>
QuantKernel KernelFor(bool residual) {
  return residual ? &Kernel<F, true> : &Kernel<F, false>;
}

QuantKernel FindKernel(GgmlType type, bool residual) {
  switch (type) {
    case GgmlType::kQ4_0:
      return KernelFor<Q4_0Format>(residual);
    case GgmlType::kQ4_1:
      return KernelFor<Q4_1Format>(residual);
    case GgmlType::kQ8_0:
      return KernelFor<Q8_0Format>(residual);
    case GgmlType::kQ6_K:
      return KernelFor<Q6_KFormat>(residual);
    default:
      return nullptr;
  }
}

}  // namespace
}  // namespace tandem::matmul_internal

#endif  // TANDEM_KERNELS_CPU_MATMUL_QUANT_KERNELS_H_
