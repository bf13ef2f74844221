// Block formats of the quantized GGML types, and conversions to fp32.
#ifndef TANDEM_KERNELS_CPU_QUANT_H_
#define TANDEM_KERNELS_CPU_QUANT_H_

#include <cstdint>

#include "kernels/cpu/ggml_types.h"

namespace tandem {

// dst[0, n) = the first n elements encoded at src in `type` (n a multiple of the block size).
void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n);

// Encodes n floats into `type` (n a multiple of the block size); for synthetic weights and
// tests. Round-to-nearest, as ggml's reference quantizers.
void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n);

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float Bf16ToFloat(uint16_t h);
uint16_t FloatToBf16(float f);  // round to nearest even

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_QUANT_H_
