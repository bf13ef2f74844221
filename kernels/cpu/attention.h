// Grouped-query attention over a paged KV cache.
#ifndef TANDEM_KERNELS_CPU_ATTENTION_H_
#define TANDEM_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

#include "absl/types/span.h"
#include "common/thread_pool.h"

namespace tandem {

// The KV cache's element type. The CPU runner keeps f16 or f32; the CUDA runner bf16.
enum class KvDtype { kF16, kF32, kBF16 };
inline int KvDtypeBytes(KvDtype dtype) { return dtype == KvDtype::kF32 ? 4 : 2; }
// "f16", "f32", "bf16": the names on the wire (KvLayoutProto.dtype) and in messages.
inline const char* KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF16: return "f16";
    case KvDtype::kF32: return "f32";
    case KvDtype::kBF16: return "bf16";
  }
  return "unknown";
}

// One layer of the paged cache. k and v each hold [num_blocks, block_size, n_kv_heads,
// head_dim] elements of `dtype`; token slot s lives in block s / block_size at row
// s % block_size.
struct PagedKvLayer {
  void* k = nullptr;
  void* v = nullptr;
  KvDtype dtype = KvDtype::kF16;
  int64_t num_blocks = 0;
  int block_size = 16;
  int n_kv_heads = 0;
  int head_dim = 0;
};

// Writes k[i], v[i] ([n, n_kv_heads, head_dim] fp32) into slot slots[i].
void WritePagedKv(const float* k, const float* v, const int64_t* slots, int64_t n,
                  const PagedKvLayer& layer);

// The queries of one sequence in one step. q and out are [n_q, n_heads, head_dim]; query i
// sits at position start_pos + i and attends causally to positions [0, start_pos + i], whose
// KV must already be in the cache at the slots given by block_table.
struct AttentionSeq {
  const float* q = nullptr;
  float* out = nullptr;
  int32_t n_q = 0;
  int32_t start_pos = 0;
  const int32_t* block_table = nullptr;  // [ceil((start_pos + n_q) / block_size)]
};

// softmax(q·kᵀ · scale) · v for every sequence; query head h reads KV head
// h / (n_heads / n_kv_heads). Work is spread over (sequence, head, query tile) on `pool`.
void PagedAttention(absl::Span<const AttentionSeq> seqs, const PagedKvLayer& layer,
                    int n_heads, float scale, ThreadPool& pool);

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_ATTENTION_H_
