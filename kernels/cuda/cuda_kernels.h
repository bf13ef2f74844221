// CUDA kernels of a transformer layer over raw device buffers: bf16 activations and
// weights, fp32 accumulation. No model knowledge: the engine passes pointers and sizes.
//
// Every launcher validates its arguments on the host (InvalidArgument, nothing launched),
// enqueues its kernels on `stream` and returns the launch status (cudaGetLastError). Kernel
// execution errors surface at the caller's next synchronizing call, as usual in CUDA.
// All pointers are device pointers unless said otherwise; index arrays are int32 unless said.
// Launchers are thread-compatible: callers serialize use of one stream themselves.
#ifndef TANDEM_KERNELS_CUDA_CUDA_KERNELS_H_
#define TANDEM_KERNELS_CUDA_CUDA_KERNELS_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem::cuda {

using bf16 = __nv_bfloat16;

// ---- Embedding --------------------------------------------------------------------------

// out[t, :] = table[ids[t], :]. table: [vocab, dim], out: [n_tokens, dim]. An id outside
// [0, vocab) yields a zero row (ids are validated by the tokenizer/router upstream).
absl::Status EmbeddingGather(const bf16* table, const int32_t* ids, int64_t n_tokens,
                             int64_t vocab, int64_t dim, bf16* out, cudaStream_t stream);

// ---- RMSNorm ----------------------------------------------------------------------------

// out[i, :] = x[i, :] / rms(x[i, :]) * weight[:]. x, out: [n_rows, dim]; out may alias x.
absl::Status RmsNorm(const bf16* x, const bf16* weight, int64_t n_rows, int64_t dim, float eps,
                     bf16* out, cudaStream_t stream);

// residual[i, :] += x[i, :] (rounded to bf16, as stored); then
// out[i, :] = rmsnorm(residual[i, :]) * weight[:]. residual, x, out: [n_rows, dim].
// out may alias x, never residual.
absl::Status AddRmsNorm(bf16* residual, const bf16* x, const bf16* weight, int64_t n_rows,
                        int64_t dim, float eps, bf16* out, cudaStream_t stream);

// ---- RoPE -------------------------------------------------------------------------------

enum class RopeLayout {
  kAdjacentPairs,  // rotates (x[2i], x[2i+1]): GGUF llama weights (Q/K rows permuted)
  kHalfSplit,      // rotates (x[i], x[i + d/2]): Hugging Face llama weights
};

// Rotates x[t, h, :] in place by angle positions[t] * theta^(-2i/head_dim) for pair i.
// Token t's heads start at x + t * token_stride (elements); token_stride = 0 means
// n_heads * head_dim (a fused QKV buffer passes its row width). head_dim must be even.
absl::Status Rope(bf16* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
                  int64_t token_stride, float theta, RopeLayout layout, cudaStream_t stream);

// ---- SwiGLU -----------------------------------------------------------------------------

// out[r, i] = silu(gate[r, i]) * up[r, i] for r < n_rows, i < dim. Row r of gate/up starts at
// gate + r * in_stride (in_stride = 0 means dim), so a fused [n, 2*ffn] gate|up buffer
// passes gate = buf, up = buf + ffn, in_stride = 2 * ffn. out: [n_rows, dim].
absl::Status SwiGlu(const bf16* gate, const bf16* up, int64_t n_rows, int64_t dim,
                    int64_t in_stride, bf16* out, cudaStream_t stream);

// ---- Paged KV cache ---------------------------------------------------------------------

// One layer of the paged cache: k and v each [num_blocks, block_size, n_kv_heads, head_dim]
// bf16; token slot s lives in block s / block_size at row s % block_size.
struct PagedKvCache {
  bf16* k = nullptr;
  bf16* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 16;
  int n_kv_heads = 0;
  int head_dim = 0;
};

// Writes k[t], v[t] ([n_tokens, n_kv_heads, head_dim], token t at k + t * token_stride;
// token_stride = 0 means n_kv_heads * head_dim) into slot slots[t] (int64); a negative slot
// skips the token (padding).
absl::Status WritePagedKv(const bf16* k, const bf16* v, const int64_t* slots, int64_t n_tokens,
                          int64_t token_stride, const PagedKvCache& cache, cudaStream_t stream);

// ---- Prefill attention ------------------------------------------------------------------

// Causal grouped-query attention for a batch of variable-length query runs in one launch
// (FlashAttention-2 tiling, online softmax, bf16 tensor cores, fp32 accumulation).
// Query head h reads KV head h / (n_heads / n_kv_heads). head_dim 64 or 128.
//
// Queries of sequence s are rows [cu_seqlens_q[s], cu_seqlens_q[s+1]) of q/out
// ([total_q, n_heads, head_dim], token row stride q_stride / out_stride elements; 0 means
// n_heads * head_dim). Query i of s sits at position start_pos + i and attends to keys
// [0, start_pos + i]. Keys come from one of two sources:
//  - contiguous (cache == nullptr): k/v [total_k, n_kv_heads, head_dim] (row stride
//    kv_stride, 0 = n_kv_heads * head_dim), sequence s owns rows [cu_seqlens_k[s],
//    cu_seqlens_k[s+1]) and start_pos = len_k - len_q (bottom-right aligned causal mask;
//    len_k >= len_q required);
//  - paged (cache != nullptr): key j of s is at slot block_tables[s * max_blocks_per_seq +
//    j / block_size] * block_size + j % block_size, start_pos = start_pos[s] (earlier chunks
//    of a chunked prefill), and the current chunk's KV must already be written.
struct PrefillAttentionArgs {
  const bf16* q = nullptr;
  bf16* out = nullptr;
  int64_t q_stride = 0;
  int64_t out_stride = 0;
  const int32_t* cu_seqlens_q = nullptr;  // [n_seqs + 1], device
  int n_seqs = 0;
  int max_seqlen_q = 0;  // host-side upper bound of the per-sequence query counts
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 0.0f;  // softmax scale, usually 1/sqrt(head_dim)
  // Contiguous source.
  const bf16* k = nullptr;
  const bf16* v = nullptr;
  int64_t kv_stride = 0;
  const int32_t* cu_seqlens_k = nullptr;  // [n_seqs + 1], device
  // Paged source.
  const PagedKvCache* cache = nullptr;   // host struct describing device buffers
  const int32_t* block_tables = nullptr;  // [n_seqs, max_blocks_per_seq], device
  int max_blocks_per_seq = 0;
  const int32_t* start_pos = nullptr;  // [n_seqs], device
};
absl::Status PrefillAttention(const PrefillAttentionArgs& args, cudaStream_t stream);

// ---- Decode attention -------------------------------------------------------------------

// One query token per sequence against its paged KV: q, out [batch, n_heads, head_dim]
// (dense), seq_lens[b] keys at positions [0, seq_lens[b]) (the current token's KV already
// written), block_tables [batch, max_blocks_per_seq]. Each CTA reads one KV head's blocks
// once for all n_heads / n_kv_heads query heads; long contexts are split into partitions
// whose partial results a second kernel merges (flash-decoding). head_dim 64 or 128,
// n_heads / n_kv_heads <= 8. A sequence with seq_lens[b] == 0 gets a zero output.
struct DecodeAttentionArgs {
  const bf16* q = nullptr;
  bf16* out = nullptr;
  const int32_t* seq_lens = nullptr;      // [batch], device
  const int32_t* block_tables = nullptr;  // [batch, max_blocks_per_seq], device
  int max_blocks_per_seq = 0;
  int batch = 0;
  int max_seq_len = 0;  // host-side upper bound of seq_lens; sizes the split
  int n_heads = 0;
  float scale = 0.0f;
  void* workspace = nullptr;  // device scratch of DecodeAttentionWorkspaceBytes(args) bytes
  size_t workspace_bytes = 0;
};
// Scratch the launch needs for the partial results (0 when no split is needed). Depends on
// batch, max_seq_len, n_heads, cache.n_kv_heads, cache.head_dim and the current device.
size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionArgs& args, const PagedKvCache& cache);
absl::Status DecodeAttention(const DecodeAttentionArgs& args, const PagedKvCache& cache,
                             cudaStream_t stream);

// ---- Sampling helpers -------------------------------------------------------------------

// out[r] = index of the largest logits[r, :] (the first on ties; NaNs are ignored).
// logits: [n_rows, vocab] fp32, out: [n_rows] int32.
absl::Status ArgmaxRows(const float* logits, int64_t n_rows, int64_t vocab, int32_t* out,
                        cudaStream_t stream);

// out[i] = float(in[i]) for i < n: bf16 logits to fp32 for host-side top-k/top-p sampling.
absl::Status Bf16ToF32(const bf16* in, int64_t n, float* out, cudaStream_t stream);

// ---- GEMM (cuBLAS) ----------------------------------------------------------------------

enum class GemmOut { kBf16, kF32 };

// The weight-streaming GEMV for decode steps: y[n, out] = beta * y + x[n, in] · w[out, in]ᵀ
// for n <= kSmallBatchRows, bf16 in, fp32 accumulation, y bf16 or fp32. One warp per output
// row reads the row once with 16-byte streaming loads (4 in flight per lane) and keeps the n
// dot products in registers; x (at most 8 rows) is read through the L1. Memory-bound by
// design: at n = 1 cuBLAS reaches ~68% of copy bandwidth on an H200 (docs/GPU.md), the
// weight read is the whole cost of a batch-1 decode step. Needs in % 8 == 0 and 16-byte
// aligned x and w (SmallBatchLinearFits); deterministic (fixed summation order).
inline constexpr int64_t kSmallBatchRows = 8;
bool SmallBatchLinearFits(const bf16* x, const bf16* w, int64_t n, int64_t in_features);
absl::Status SmallBatchLinear(const bf16* x, const bf16* w, int64_t n, int64_t in_features,
                              int64_t out_features, void* y, GemmOut out_type,
                              cudaStream_t stream, float beta = 0.0f);

// Owns a cuBLAS handle and its workspace. One per stream-owning thread (cuBLAS handles are
// not safe to share between threads that enqueue concurrently).
class CublasGemm {
 public:
  static absl::StatusOr<std::unique_ptr<CublasGemm>> Create();
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  // y[n, out_features] = beta * y + x[n, in_features] · w[out_features, in_features]ᵀ,
  // bf16 inputs, fp32 compute; y is bf16 or fp32 per `out_type`, row-major, dense.
  // Up to kSmallBatchRows rows (decode steps) go to SmallBatchLinear when it can take them
  // (see small_batch_kernel()); the rest to cublasGemmEx.
  absl::Status Linear(const bf16* x, const bf16* w, int64_t n, int64_t in_features,
                      int64_t out_features, void* y, GemmOut out_type, cudaStream_t stream,
                      float beta = 0.0f);

  // Whether Linear sends small batches to SmallBatchLinear (default on).
  void set_small_batch_kernel(bool on) { small_batch_kernel_ = on; }
  bool small_batch_kernel() const { return small_batch_kernel_; }

 private:
  CublasGemm() = default;
  bool small_batch_kernel_ = true;
  void* handle_ = nullptr;     // cublasHandle_t
  void* workspace_ = nullptr;  // device, kWorkspaceBytes
};

}  // namespace tandem::cuda

#endif  // TANDEM_KERNELS_CUDA_CUDA_KERNELS_H_
