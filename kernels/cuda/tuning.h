// Launch variants exposed for benchmarks and tuning only; the engine calls cuda_kernels.h.
#ifndef TANDEM_KERNELS_CUDA_TUNING_H_
#define TANDEM_KERNELS_CUDA_TUNING_H_

#include "kernels/cuda/cuda_kernels.h"

namespace tandem::cuda::internal {

// Tile configurations of PrefillAttention.
enum class PrefillVariant {
  kDefault,     // what PrefillAttention uses for the head dim
  kWarps4Occ2,  // 64 queries per CTA, 4 warps, >= 2 CTAs per SM (up to 255 registers)
  kWarps4Occ3,  // 64 queries per CTA, 4 warps, >= 3 CTAs per SM (168 registers, some spills)
  kWarps8,      // 128 queries per CTA, 8 warps: half the K/V tile traffic per query
  kWarps4Rows32,  // 128 queries per CTA, 4 warps of 32 rows: each K/V fragment feeds 2 MMAs
};
const char* PrefillVariantName(PrefillVariant v);

absl::Status PrefillAttentionTuned(const PrefillAttentionArgs& args, PrefillVariant variant,
                                   cudaStream_t stream);

// Implementations of DecodeAttention. Both use the same partition plan, so
// DecodeAttentionWorkspaceBytes covers either; results agree to fp32 rounding.
enum class DecodeVariant {
  kDefault,    // what DecodeAttention uses (kDefaultDecodeVariant in decode_attention.cu)
  kRegisters,  // rows loaded straight into registers, block id looked up per row (first version)
  kPipelined,  // row offsets resolved once per CTA; K then V tiles through a cp.async ring
};
const char* DecodeVariantName(DecodeVariant v);

absl::Status DecodeAttentionTuned(const DecodeAttentionArgs& args, const PagedKvCache& cache,
                                  DecodeVariant variant, cudaStream_t stream);

}  // namespace tandem::cuda::internal

#endif  // TANDEM_KERNELS_CUDA_TUNING_H_
