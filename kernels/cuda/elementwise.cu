// Row-wise and element-wise kernels: embedding gather, RMSNorm (plain and fused with the
// residual add), RoPE, SwiGLU, paged KV write, argmax and the bf16 -> fp32 copy.
#include <atomic>
#include <cmath>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace tandem::cuda {
namespace internal {

int NumSms() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  const int slot = dev & 63;
  int n = cache[slot].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    return 132;
  }
  cache[slot].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace internal

namespace {

using internal::Aligned16;
using internal::Bf16x8;
using internal::BlockSum;
using internal::CeilDiv;
using internal::LaunchStatus;
using internal::Pack8;
using internal::Unpack8;

// Grid size for a grid-stride loop over n items with `threads` per block.
unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = CeilDiv(n, threads);
  const int64_t cap = int64_t{internal::NumSms()} * 32;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// ---- Embedding --------------------------------------------------------------------------

template <bool kVec>
__global__ void EmbeddingKernel(const bf16* __restrict__ table, const int32_t* __restrict__ ids,
                                int64_t vocab, int64_t dim, bf16* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  const bool valid = id >= 0 && id < vocab;
  const bf16* src = table + (valid ? int64_t{id} * dim : 0);
  bf16* dst = out + t * dim;
  if constexpr (kVec) {
    for (int64_t c = threadIdx.x; c < dim / 8; c += blockDim.x) {
      const uint4 v = valid ? internal::Ldg16(src + c * 8) : make_uint4(0, 0, 0, 0);
      reinterpret_cast<uint4*>(dst)[c] = v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      dst[i] = valid ? src[i] : __float2bfloat16(0.0f);
    }
  }
}

// ---- RMSNorm ----------------------------------------------------------------------------

// One block per row. kFused: residual += x first (stored in bf16), then normalize residual.
// The second pass re-reads what this same thread wrote in the first, so plain loads (not
// the non-coherent path) are used for residual.
template <bool kVec, bool kFused>
__global__ void RmsNormKernel(bf16* residual, const bf16* x, const bf16* __restrict__ weight,
                              int64_t dim, float eps, bf16* out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const bf16* xr = x + row * dim;
  bf16* rr = kFused ? residual + row * dim : nullptr;
  const bf16* src = kFused ? rr : xr;  // what gets normalized
  bf16* o = out + row * dim;
  float sumsq = 0.0f;
  if constexpr (kVec) {
    for (int64_t c = threadIdx.x; c < dim / 8; c += blockDim.x) {
      float a[8];
      Unpack8(reinterpret_cast<const uint4*>(xr)[c], a);
      if constexpr (kFused) {
        float r[8];
        Unpack8(reinterpret_cast<const uint4*>(rr)[c], r);
        for (int j = 0; j < 8; ++j) r[j] += a[j];
        const uint4 packed = Pack8(r);
        reinterpret_cast<uint4*>(rr)[c] = packed;
        Unpack8(packed, a);  // the rounded values are what gets normalized
      }
      for (int j = 0; j < 8; ++j) sumsq += a[j] * a[j];
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      float a = __bfloat162float(xr[i]);
      if constexpr (kFused) {
        const bf16 r = __float2bfloat16(__bfloat162float(rr[i]) + a);
        rr[i] = r;
        a = __bfloat162float(r);
      }
      sumsq += a * a;
    }
  }
  const float total = BlockSum(sumsq, scratch);
  const float inv_rms = rsqrtf(total / static_cast<float>(dim) + eps);
  if constexpr (kVec) {
    for (int64_t c = threadIdx.x; c < dim / 8; c += blockDim.x) {
      float a[8], w[8];
      Unpack8(reinterpret_cast<const uint4*>(src)[c], a);
      Unpack8(internal::Ldg16(weight + c * 8), w);
      for (int j = 0; j < 8; ++j) a[j] = a[j] * inv_rms * w[j];
      reinterpret_cast<uint4*>(o)[c] = Pack8(a);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      o[i] = __float2bfloat16(__bfloat162float(src[i]) * inv_rms * __bfloat162float(weight[i]));
    }
  }
}

template <bool kFused>
absl::Status LaunchRmsNorm(bf16* residual, const bf16* x, const bf16* weight, int64_t n_rows,
                           int64_t dim, float eps, bf16* out, cudaStream_t stream) {
  const bool vec = dim % 8 == 0 && Aligned16(x) && Aligned16(weight) && Aligned16(out) &&
                   (!kFused || Aligned16(residual));
  const int threads = dim >= 2048 ? 256 : 128;
  const auto grid = static_cast<unsigned>(n_rows);
  if (vec) {
    RmsNormKernel<true, kFused><<<grid, threads, 0, stream>>>(residual, x, weight, dim, eps, out);
  } else {
    RmsNormKernel<false, kFused><<<grid, threads, 0, stream>>>(residual, x, weight, dim, eps, out);
  }
  return LaunchStatus("RmsNormKernel");
}

// ---- RoPE -------------------------------------------------------------------------------

template <RopeLayout kLayout>
__global__ void RopeKernel(bf16* x, const int32_t* __restrict__ positions, int64_t n_tokens,
                           int n_heads, int head_dim, int64_t token_stride, float log2_theta) {
  const int half = head_dim / 2;
  const int64_t total = n_tokens * n_heads * half;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t th = idx / half;
    const int h = static_cast<int>(th % n_heads);
    const int64_t t = th / n_heads;
    bf16* head = x + t * token_stride + int64_t{h} * head_dim;
    const int i0 = kLayout == RopeLayout::kAdjacentPairs ? 2 * i : i;
    const int i1 = kLayout == RopeLayout::kAdjacentPairs ? 2 * i + 1 : i + half;
    const float inv_freq = exp2f(-log2_theta * (2.0f * i) / head_dim);
    float s, c;
    sincosf(static_cast<float>(positions[t]) * inv_freq, &s, &c);
    const float x0 = __bfloat162float(head[i0]);
    const float x1 = __bfloat162float(head[i1]);
    head[i0] = __float2bfloat16(x0 * c - x1 * s);
    head[i1] = __float2bfloat16(x0 * s + x1 * c);
  }
}

// ---- SwiGLU -----------------------------------------------------------------------------

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + __expf(-g)); }

template <bool kVec>
__global__ void SwiGluKernel(const bf16* __restrict__ gate, const bf16* __restrict__ up,
                             int64_t n_rows, int64_t dim, int64_t in_stride,
                             bf16* __restrict__ out) {
  const int64_t per_row = kVec ? dim / 8 : dim;
  const int64_t total = n_rows * per_row;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = idx / per_row, c = idx % per_row;
    if constexpr (kVec) {
      float g[8], u[8];
      Unpack8(internal::Ldg16(gate + r * in_stride + c * 8), g);
      Unpack8(internal::Ldg16(up + r * in_stride + c * 8), u);
      for (int j = 0; j < 8; ++j) g[j] = Silu(g[j]) * u[j];
      reinterpret_cast<uint4*>(out + r * dim)[c] = Pack8(g);
    } else {
      const float g = __bfloat162float(gate[r * in_stride + c]);
      const float u = __bfloat162float(up[r * in_stride + c]);
      out[r * dim + c] = __float2bfloat16(Silu(g) * u);
    }
  }
}

// ---- Paged KV write ---------------------------------------------------------------------

__global__ void WritePagedKvKernel(const bf16* __restrict__ k, const bf16* __restrict__ v,
                                   const int64_t* __restrict__ slots, int64_t n_tokens,
                                   int64_t token_stride, int row_chunks, bf16* __restrict__ k_cache,
                                   bf16* __restrict__ v_cache, int64_t num_slots) {
  // row_chunks = n_kv_heads * head_dim / 8: the 16-byte pieces of one token.
  const int64_t total = n_tokens * row_chunks;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = idx / row_chunks;
    const int c = static_cast<int>(idx % row_chunks);
    const int64_t slot = slots[t];
    if (slot < 0 || slot >= num_slots) continue;
    const int64_t src = t * token_stride + int64_t{c} * 8;
    const int64_t dst = slot * row_chunks * 8 + int64_t{c} * 8;
    reinterpret_cast<uint4*>(k_cache + dst)[0] = internal::Ldg16(k + src);
    reinterpret_cast<uint4*>(v_cache + dst)[0] = internal::Ldg16(v + src);
  }
}

// ---- Argmax -----------------------------------------------------------------------------

__device__ __forceinline__ void ArgmaxCombine(float& best, int& best_i, float v, int i) {
  if (v > best || (v == best && i < best_i)) {
    best = v;
    best_i = i;
  }
}

__global__ void ArgmaxKernel(const float* __restrict__ logits, int64_t vocab,
                             int32_t* __restrict__ out) {
  __shared__ float s_val[32];
  __shared__ int s_idx[32];
  const float* row = logits + blockIdx.x * vocab;
  float best = -INFINITY;
  int best_i = INT_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    ArgmaxCombine(best, best_i, row[i], static_cast<int>(i));  // NaN compares false
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int i = __shfl_xor_sync(0xffffffffu, best_i, o);
    ArgmaxCombine(best, best_i, v, i);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    s_val[warp] = best;
    s_idx[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      ArgmaxCombine(best, best_i, s_val[w], s_idx[w]);
    }
    out[blockIdx.x] = best_i == INT_MAX ? 0 : best_i;  // an all-NaN row yields 0
  }
}

__global__ void Bf16ToF32Kernel(const bf16* __restrict__ in, int64_t n, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

constexpr int64_t kMaxGridX = 2147483647;

}  // namespace

absl::Status EmbeddingGather(const bf16* table, const int32_t* ids, int64_t n_tokens,
                             int64_t vocab, int64_t dim, bf16* out, cudaStream_t stream) {
  TANDEM_ARG_CHECK(n_tokens >= 0 && n_tokens <= kMaxGridX, "n_tokens=", n_tokens);
  TANDEM_ARG_CHECK(vocab > 0 && dim > 0, "vocab=", vocab, " dim=", dim);
  TANDEM_ARG_CHECK(table != nullptr && out != nullptr && (ids != nullptr || n_tokens == 0));
  if (n_tokens == 0) return absl::OkStatus();
  const bool vec = dim % 8 == 0 && Aligned16(table) && Aligned16(out);
  const auto grid = static_cast<unsigned>(n_tokens);
  if (vec) {
    EmbeddingKernel<true><<<grid, 128, 0, stream>>>(table, ids, vocab, dim, out);
  } else {
    EmbeddingKernel<false><<<grid, 128, 0, stream>>>(table, ids, vocab, dim, out);
  }
  return LaunchStatus("EmbeddingKernel");
}

absl::Status RmsNorm(const bf16* x, const bf16* weight, int64_t n_rows, int64_t dim, float eps,
                     bf16* out, cudaStream_t stream) {
  TANDEM_ARG_CHECK(n_rows >= 0 && n_rows <= kMaxGridX && dim > 0, "n_rows=", n_rows,
                   " dim=", dim);
  TANDEM_ARG_CHECK(x != nullptr && weight != nullptr && out != nullptr);
  TANDEM_ARG_CHECK(eps >= 0.0f, "eps=", eps);
  if (n_rows == 0) return absl::OkStatus();
  return LaunchRmsNorm<false>(nullptr, x, weight, n_rows, dim, eps, out, stream);
}

absl::Status AddRmsNorm(bf16* residual, const bf16* x, const bf16* weight, int64_t n_rows,
                        int64_t dim, float eps, bf16* out, cudaStream_t stream) {
  TANDEM_ARG_CHECK(n_rows >= 0 && n_rows <= kMaxGridX && dim > 0, "n_rows=", n_rows,
                   " dim=", dim);
  TANDEM_ARG_CHECK(residual != nullptr && x != nullptr && weight != nullptr && out != nullptr);
  TANDEM_ARG_CHECK(out != residual, "out must not alias residual");
  TANDEM_ARG_CHECK(eps >= 0.0f, "eps=", eps);
  if (n_rows == 0) return absl::OkStatus();
  return LaunchRmsNorm<true>(residual, x, weight, n_rows, dim, eps, out, stream);
}

absl::Status Rope(bf16* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
                  int64_t token_stride, float theta, RopeLayout layout, cudaStream_t stream) {
  TANDEM_ARG_CHECK(n_tokens >= 0 && n_heads > 0 && head_dim > 0 && head_dim % 2 == 0,
                   "n_tokens=", n_tokens, " n_heads=", n_heads, " head_dim=", head_dim);
  if (token_stride == 0) token_stride = int64_t{n_heads} * head_dim;
  TANDEM_ARG_CHECK(token_stride >= int64_t{n_heads} * head_dim, "token_stride=", token_stride);
  TANDEM_ARG_CHECK(theta > 1.0f, "theta=", theta);
  TANDEM_ARG_CHECK(x != nullptr && (positions != nullptr || n_tokens == 0));
  if (n_tokens == 0) return absl::OkStatus();
  const int64_t total = n_tokens * n_heads * (head_dim / 2);
  const unsigned grid = GridFor(total, 256);
  const float log2_theta = static_cast<float>(std::log2(static_cast<double>(theta)));
  if (layout == RopeLayout::kAdjacentPairs) {
    RopeKernel<RopeLayout::kAdjacentPairs><<<grid, 256, 0, stream>>>(
        x, positions, n_tokens, n_heads, head_dim, token_stride, log2_theta);
  } else {
    RopeKernel<RopeLayout::kHalfSplit><<<grid, 256, 0, stream>>>(
        x, positions, n_tokens, n_heads, head_dim, token_stride, log2_theta);
  }
  return LaunchStatus("RopeKernel");
}

absl::Status SwiGlu(const bf16* gate, const bf16* up, int64_t n_rows, int64_t dim,
                    int64_t in_stride, bf16* out, cudaStream_t stream) {
  TANDEM_ARG_CHECK(n_rows >= 0 && dim > 0, "n_rows=", n_rows, " dim=", dim);
  if (in_stride == 0) in_stride = dim;
  TANDEM_ARG_CHECK(in_stride >= dim, "in_stride=", in_stride, " dim=", dim);
  TANDEM_ARG_CHECK(gate != nullptr && up != nullptr && out != nullptr);
  if (n_rows == 0) return absl::OkStatus();
  const bool vec = dim % 8 == 0 && in_stride % 8 == 0 && Aligned16(gate) && Aligned16(up) &&
                   Aligned16(out);
  const int64_t items = n_rows * (vec ? dim / 8 : dim);
  const unsigned grid = GridFor(items, 256);
  if (vec) {
    SwiGluKernel<true><<<grid, 256, 0, stream>>>(gate, up, n_rows, dim, in_stride, out);
  } else {
    SwiGluKernel<false><<<grid, 256, 0, stream>>>(gate, up, n_rows, dim, in_stride, out);
  }
  return LaunchStatus("SwiGluKernel");
}

absl::Status WritePagedKv(const bf16* k, const bf16* v, const int64_t* slots, int64_t n_tokens,
                          int64_t token_stride, const PagedKvCache& cache, cudaStream_t stream) {
  TANDEM_ARG_CHECK(cache.k != nullptr && cache.v != nullptr && cache.num_blocks > 0 &&
                       cache.block_size > 0 && cache.n_kv_heads > 0 && cache.head_dim > 0,
                   "num_blocks=", cache.num_blocks, " block_size=", cache.block_size,
                   " n_kv_heads=", cache.n_kv_heads, " head_dim=", cache.head_dim);
  TANDEM_ARG_CHECK(cache.head_dim % 8 == 0, "head_dim=", cache.head_dim);
  const int64_t row = int64_t{cache.n_kv_heads} * cache.head_dim;
  if (token_stride == 0) token_stride = row;
  TANDEM_ARG_CHECK(token_stride >= row && token_stride % 8 == 0, "token_stride=", token_stride);
  TANDEM_ARG_CHECK(n_tokens >= 0, "n_tokens=", n_tokens);
  if (n_tokens == 0) return absl::OkStatus();
  TANDEM_ARG_CHECK(k != nullptr && v != nullptr && slots != nullptr);
  TANDEM_ARG_CHECK(Aligned16(k) && Aligned16(v) && Aligned16(cache.k) && Aligned16(cache.v),
                   "buffers must be 16-byte aligned");
  const int row_chunks = static_cast<int>(row / 8);
  const unsigned grid = GridFor(n_tokens * row_chunks, 256);
  WritePagedKvKernel<<<grid, 256, 0, stream>>>(k, v, slots, n_tokens, token_stride, row_chunks,
                                               cache.k, cache.v,
                                               cache.num_blocks * cache.block_size);
  return LaunchStatus("WritePagedKvKernel");
}

absl::Status ArgmaxRows(const float* logits, int64_t n_rows, int64_t vocab, int32_t* out,
                        cudaStream_t stream) {
  TANDEM_ARG_CHECK(n_rows >= 0 && n_rows <= kMaxGridX, "n_rows=", n_rows);
  TANDEM_ARG_CHECK(vocab > 0 && vocab < INT32_MAX, "vocab=", vocab);
  TANDEM_ARG_CHECK(logits != nullptr && out != nullptr);
  if (n_rows == 0) return absl::OkStatus();
  ArgmaxKernel<<<static_cast<unsigned>(n_rows), 512, 0, stream>>>(logits, vocab, out);
  return LaunchStatus("ArgmaxKernel");
}

absl::Status Bf16ToF32(const bf16* in, int64_t n, float* out, cudaStream_t stream) {
  TANDEM_ARG_CHECK(n >= 0, "n=", n);
  if (n == 0) return absl::OkStatus();
  TANDEM_ARG_CHECK(in != nullptr && out != nullptr);
  Bf16ToF32Kernel<<<GridFor(n, 256), 256, 0, stream>>>(in, n, out);
  return LaunchStatus("Bf16ToF32Kernel");
}

}  // namespace tandem::cuda
