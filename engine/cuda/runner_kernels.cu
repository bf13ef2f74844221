#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "engine/cuda/runner_kernels.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;

absl::Status LaunchStatus(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(kernel, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

__global__ void EmbeddingGatherF32Kernel(const __nv_bfloat16* __restrict__ table,
                                         const int32_t* __restrict__ ids, int64_t vocab,
                                         int64_t dim, float* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  float* o = out + t * dim;
  if (id < 0 || id >= vocab) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = 0.0f;
    return;
  }
  const __nv_bfloat16* row = table + static_cast<int64_t>(id) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __bfloat162float(row[i]);
}

// One CTA of kThreads per output row; fp32 sum of squares reduced over the CTA.
__global__ void RmsNormF32ToBf16Kernel(const float* __restrict__ x,
                                       const int32_t* __restrict__ rows, int64_t dim,
                                       const float* __restrict__ weight, float eps,
                                       __nv_bfloat16* __restrict__ out) {
  __shared__ float warp_sums[kThreads / 32];
  const int64_t r = blockIdx.x;
  const int64_t src = rows != nullptr ? static_cast<int64_t>(rows[r]) : r;
  const float* xr = x + src * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = xr[i];
    ss = fmaf(v, v, ss);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    ss = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) warp_sums[0] = ss;
  }
  __syncthreads();
  // As the CPU reference: 1 / sqrt(mean + eps), then x * inv * w.
  const float inv = 1.0f / sqrtf(warp_sums[0] / static_cast<float>(dim) + eps);
  __nv_bfloat16* o = out + r * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    o[i] = __float2bfloat16_rn(xr[i] * inv * weight[i]);
  }
}

// One CTA per (block, K or V): 16-byte loads and stores over the block.
__global__ void CopyKvBlocksKernel(uint4* __restrict__ k_cache, uint4* __restrict__ v_cache,
                                   const int32_t* __restrict__ blocks, int64_t n_blocks,
                                   int64_t block_vecs, uint4* __restrict__ packed, bool to_packed) {
  const int64_t i = blockIdx.x;
  const int part = blockIdx.y;
  uint4* cache = (part == 0 ? k_cache : v_cache) + static_cast<int64_t>(blocks[i]) * block_vecs;
  uint4* buf = packed + (part * n_blocks + i) * block_vecs;
  if (to_packed) {
    for (int64_t v = threadIdx.x; v < block_vecs; v += blockDim.x) buf[v] = cache[v];
  } else {
    for (int64_t v = threadIdx.x; v < block_vecs; v += blockDim.x) cache[v] = buf[v];
  }
}

}  // namespace

absl::Status CopyKvBlocks(void* k_cache, void* v_cache, const int32_t* blocks, int64_t n_blocks,
                          int64_t block_bytes, void* packed, bool to_packed, cudaStream_t stream) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (n_blocks < 0 || n_blocks > kMaxGridX || block_bytes <= 0 || block_bytes % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CopyKvBlocks: n_blocks=", n_blocks, " block_bytes=", block_bytes));
  }
  if (n_blocks == 0) return absl::OkStatus();
  if (k_cache == nullptr || v_cache == nullptr || blocks == nullptr || packed == nullptr) {
    return absl::InvalidArgumentError("CopyKvBlocks: null pointer");
  }
  if (!aligned(k_cache) || !aligned(v_cache) || !aligned(packed)) {
    return absl::InvalidArgumentError("CopyKvBlocks: buffers must be 16-byte aligned");
  }
  const int64_t block_vecs = block_bytes / 16;
  const int threads = block_vecs >= 512 ? 512 : (block_vecs >= 256 ? 256 : 128);
  CopyKvBlocksKernel<<<dim3(static_cast<unsigned>(n_blocks), 2), threads, 0, stream>>>(
      static_cast<uint4*>(k_cache), static_cast<uint4*>(v_cache), blocks, n_blocks, block_vecs,
      static_cast<uint4*>(packed), to_packed);
  return LaunchStatus("CopyKvBlocksKernel");
}

absl::Status EmbeddingGatherF32(const __nv_bfloat16* table, const int32_t* ids, int64_t n_tokens,
                                int64_t vocab, int64_t dim, float* out, cudaStream_t stream) {
  if (n_tokens < 0 || n_tokens > kMaxGridX || vocab <= 0 || dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EmbeddingGatherF32: n_tokens=", n_tokens, " vocab=", vocab, " dim=", dim));
  }
  if (n_tokens == 0) return absl::OkStatus();
  if (table == nullptr || ids == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("EmbeddingGatherF32: null pointer");
  }
  EmbeddingGatherF32Kernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      table, ids, vocab, dim, out);
  return LaunchStatus("EmbeddingGatherF32Kernel");
}

absl::Status RmsNormF32ToBf16(const float* x, const int32_t* rows, int64_t n_rows, int64_t dim,
                              const float* weight, float eps, __nv_bfloat16* out,
                              cudaStream_t stream) {
  if (n_rows < 0 || n_rows > kMaxGridX || dim <= 0 || !(eps >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNormF32ToBf16: n_rows=", n_rows, " dim=", dim, " eps=", eps));
  }
  if (n_rows == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("RmsNormF32ToBf16: null pointer");
  }
  RmsNormF32ToBf16Kernel<<<static_cast<unsigned>(n_rows), kThreads, 0, stream>>>(x, rows, dim,
                                                                                 weight, eps, out);
  return LaunchStatus("RmsNormF32ToBf16Kernel");
}

}  // namespace tandem::cuda
