// Matrix products against weights stored in any supported GGML type.
#ifndef TANDEM_KERNELS_CPU_MATMUL_H_
#define TANDEM_KERNELS_CPU_MATMUL_H_

#include <cstdint>

#include "common/thread_pool.h"
#include "kernels/cpu/ggml_types.h"

namespace tandem {

// A row-major weight matrix as GGUF stores it: `rows` output features, each a row of `cols`
// input features encoded in `type` (row r starts at data + r * RowBytes(type, cols)).
struct WeightView {
  GgmlType type = GgmlType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
};

// y[n, w.rows] = x[n, w.cols] · wᵀ. The fast path: quantized weights are multiplied in
// integer arithmetic against activations quantized per 32-element block to 8 bits (as
// llama.cpp does); float weights in fp32 FMA. Uses every thread of `pool`.
void MatMul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool);

// The same product with every weight dequantized to fp32 and fp32 activations (no
// activation quantization): the precision reference for golden tests. Slower.
void MatMulExact(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool);

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_MATMUL_H_
