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

// How MatMul rounds activations for quantized weights (float weights always use fp32).
enum class ActivationQuant {
  // 8 bits per value with one scale per 32 values, as llama.cpp does. Fastest; the rounding
  // moves each product by ~1% (relative RMS), which over SmolLM2-135M's 30 layers moves
  // logits by up to ~1 and flips greedy tokens wherever the top two are that close.
  kInt8,
  // kInt8 plus an 8-bit residual of the rounding (value ≈ d·(q + r/128)): ~15 bits, logits
  // within ~1e-2 of MatMulExact. About 1.3-1.6x kInt8's arithmetic where it is compute bound
  // (batches, prefill); decode at batch 1 is bound by reading the weights either way.
  kInt8Residual,
};

// y[n, w.rows] = x[n, w.cols] · wᵀ. The fast path: quantized weights are multiplied in
// integer arithmetic against activations quantized per 32-element block (see
// ActivationQuant); float weights in fp32 FMA. Uses every thread of `pool`. A row of x gives
// bit-identical results whatever n, the thread count or the CPU's instruction set.
void MatMul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool,
            ActivationQuant quant);
// MatMul with kDefaultActivationQuant.
void MatMul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool);
inline constexpr ActivationQuant kDefaultActivationQuant = ActivationQuant::kInt8Residual;

// The same product with every weight dequantized to fp32 and fp32 activations (no
// activation quantization): the precision reference for golden tests. Slower.
void MatMulExact(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool);

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_MATMUL_H_
