// Element-wise and row-wise ops of a transformer layer, over raw fp32 buffers.
#ifndef TANDEM_KERNELS_CPU_OPS_H_
#define TANDEM_KERNELS_CPU_OPS_H_

#include <cstdint>

namespace tandem {

// out[i, :] = x[i, :] / rms(x[i, :]) * weight[:], for i in [0, n). out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);

enum class RopeLayout {
  kAdjacentPairs,  // rotates (x[2i], x[2i+1]): GGUF llama weights (Q/K rows permuted)
  kHalfSplit,      // rotates (x[i], x[i + d/2]): Hugging Face llama weights
};

// Rotates x[t, h, :] (x: [n_tokens, n_heads, head_dim]) in place by position positions[t];
// frequency of pair i is theta^(-2i/head_dim).
void Rope(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
          float theta, RopeLayout layout);

// out[i] = silu(gate[i]) * up[i]. out may alias gate.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// x[i] += y[i]
void AddInPlace(float* x, const float* y, int64_t n);

// In-place softmax over x[0, n).
void Softmax(float* x, int64_t n);

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_OPS_H_
