// The two kernels the CUDA model runner needs beyond kernels/cuda: they keep the residual
// stream in fp32 (the GEMMs accumulate into it with beta = 1), which kernels/cuda's bf16
// RmsNorm/AddRmsNorm do not. Launchers validate on the host and return the launch status.
#ifndef TANDEM_ENGINE_CUDA_RUNNER_KERNELS_H_
#define TANDEM_ENGINE_CUDA_RUNNER_KERNELS_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tandem::cuda {

// out[t, :] = float(table[ids[t], :]). table: [vocab, dim] bf16, out: [n_tokens, dim] fp32.
// An id outside [0, vocab) gives a zero row (the runner validates ids on the host).
absl::Status EmbeddingGatherF32(const __nv_bfloat16* table, const int32_t* ids, int64_t n_tokens,
                                int64_t vocab, int64_t dim, float* out, cudaStream_t stream);

// out[r, :] = bf16(x[src, :] / sqrt(mean(x[src, :]^2) + eps) * weight[:]) with src = rows[r]
// (rows == nullptr: src = r). x: fp32 [*, dim], weight: fp32 [dim], out: bf16 [n_rows, dim].
absl::Status RmsNormF32ToBf16(const float* x, const int32_t* rows, int64_t n_rows, int64_t dim,
                              const float* weight, float eps, __nv_bfloat16* out,
                              cudaStream_t stream);

// Gathers (to_packed) or scatters one layer's KV blocks in one launch:
// packed = [K of blocks[0..n), V of blocks[0..n)], each block `block_bytes` bytes, block i of
// the K (V) cache at k_cache (v_cache) + blocks[i] * block_bytes. `blocks` is device memory
// (int32, validated on the host); block_bytes, the caches and `packed` must be multiples of /
// aligned to 16 bytes. `packed` must be device-accessible.
absl::Status CopyKvBlocks(void* k_cache, void* v_cache, const int32_t* blocks, int64_t n_blocks,
                          int64_t block_bytes, void* packed, bool to_packed, cudaStream_t stream);

}  // namespace tandem::cuda

#endif  // TANDEM_ENGINE_CUDA_RUNNER_KERNELS_H_
