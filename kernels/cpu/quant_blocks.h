// Internal to tandem_kernels_cpu: the byte layout of GGML's quantized blocks (identical to
// ggml's block_q4_0, block_q4_1, block_q8_0, block_q6_K) and of the activation blocks the
// integer matmul kernels use.
#ifndef TANDEM_KERNELS_CPU_QUANT_BLOCKS_H_
#define TANDEM_KERNELS_CPU_QUANT_BLOCKS_H_

#include <cstdint>

namespace tandem {

inline constexpr int kQK = 32;     // elements per block of Q4_0, Q4_1, Q8_0
inline constexpr int kQK_K = 256;  // elements per K-quant super-block

// x[j] = ((qs[j] & 15) - 8) * d, x[j + 16] = ((qs[j] >> 4) - 8) * d.
struct BlockQ4_0 {
  uint16_t d;  // fp16
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// x[j] = (qs[j] & 15) * d + m, x[j + 16] = (qs[j] >> 4) * d + m.
struct BlockQ4_1 {
  uint16_t d;  // fp16
  uint16_t m;  // fp16
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// x[j] = qs[j] * d.
struct BlockQ8_0 {
  uint16_t d;  // fp16
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34);

// 256 elements in 16 sub-blocks of 16, each with an int8 scale; 6-bit levels (offset 32)
// split into 4 low bits (ql) and 2 high bits (qh). See DequantizeQ6_K for the bit layout.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;  // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210);

// An activation block for the integer kernels: x[j] ≈ qs[j] * d, with s = d * Σ qs[j]
// (the term Q4_1's offset m multiplies, and Q4_0's -8 and Q6_K's -32 offsets).
// fp32 scales, unlike ggml's fp16 Q8_1, to lose no precision for free.
struct BlockQ8A {
  float d;
  float s;
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8A) == 40);

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_QUANT_BLOCKS_H_
