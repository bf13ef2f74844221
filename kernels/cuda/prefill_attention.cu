// Causal GQA prefill attention, FlashAttention-2 style: one CTA per (query head, query tile,
// sequence); each warp owns 16 query rows (4 or 8 warps: 64 or 128 queries); K/V stream through shared memory in
// 64-key tiles (cp.async, XOR-swizzled rows, loads of one operand overlapped with the
// matmul on the other); Q·Kᵀ and P·V run on tensor cores (mma.sync m16n8k16 bf16, fp32
// accumulation) with the online softmax in registers.
#include <cfloat>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/mma_utils.cuh"
#include "kernels/cuda/tuning.h"

namespace tandem::cuda {
namespace {

using internal::CpAsync16;
using internal::CpAsyncCommit;
using internal::CpAsyncWaitAll;
using internal::LdMatrixX4;
using internal::LdMatrixX4Trans;
using internal::MmaBf16;
using internal::PackBf16x2;

constexpr int kBlockN = 64;  // keys per tile

// kWarps warps own 16 * kMAtoms query rows each (kBlockM queries per CTA); kMinCtas trades
// registers for occupancy (__launch_bounds__ minimum CTAs per SM). Two 16-row groups per
// warp (as FlashAttention-2 does at head dim 128) reuse every K/V fragment read from shared
// memory for two MMAs.
template <int kWarpsT, int kMinCtasT, int kMAtomsT = 1>
struct Config {
  static constexpr int kWarps = kWarpsT;
  static constexpr int kMAtoms = kMAtomsT;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kWarps * 16 * kMAtoms;
  static constexpr int kMinCtas = kMinCtasT;
};

struct KernelParams {
  const bf16* q;
  bf16* out;
  int64_t q_stride, out_stride;
  const int32_t* cu_seqlens_q;
  int n_heads, group;  // group = n_heads / n_kv_heads
  float scale_log2;    // softmax scale * log2(e)
  // contiguous
  const bf16* k;
  const bf16* v;
  int64_t kv_stride;
  const int32_t* cu_seqlens_k;
  // paged
  const bf16* k_cache;
  const bf16* v_cache;
  int block_size, n_kv_heads;
  const int32_t* block_tables;
  int max_blocks_per_seq;
  const int32_t* start_pos;
};

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows, D] bf16 tile whose chunks
// are XOR-swizzled by row % 8, so that ldmatrix's 8 row reads hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int Swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Copies rows [row0, row0 + kRows) of a tile into shared memory; rows at or past `limit`
// are zero-filled. row_ptr(r) gives the global address of row r.
template <int D, int kRows, int kThreads, typename RowPtr>
__device__ __forceinline__ void LoadTile(bf16* smem, int row0, int limit, RowPtr row_ptr) {
  constexpr int kChunks = D / 8;
  static_assert(kRows * kChunks % kThreads == 0);
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < limit;
    const bf16* src = row_ptr(valid ? row0 + r : 0) + c * 8;
    CpAsync16(smem + Swz<D>(r, c), src, valid);
  }
}

template <int D, bool kPaged, typename Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinCtas)
    PrefillAttentionKernel(const KernelParams p) {
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kThreads = Cfg::kThreads;
  constexpr int kMA = Cfg::kMAtoms;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* s_q = reinterpret_cast<bf16*>(smem_raw);  // [kBlockM, D]
  bf16* s_k = s_q + kBlockM * D;                  // [kBlockN, D]
  bf16* s_v = s_k + kBlockN * D;                  // [kBlockN, D]

  const int h = blockIdx.x;
  const int m_block = gridDim.y - 1 - blockIdx.y;  // heaviest (last) query tiles first
  const int seq = blockIdx.z;
  const int q_begin = p.cu_seqlens_q[seq];
  const int len_q = p.cu_seqlens_q[seq + 1] - q_begin;
  const int m_start = m_block * kBlockM;
  if (m_start >= len_q) return;
  int start, len_k, k_begin = 0;
  if constexpr (kPaged) {
    start = p.start_pos[seq];
    len_k = start + len_q;
  } else {
    k_begin = p.cu_seqlens_k[seq];
    len_k = p.cu_seqlens_k[seq + 1] - k_begin;
    start = len_k - len_q;
  }
  const int kvh = h / p.group;
  const int m_end = min(m_start + kBlockM, len_q);
  const int n_keys = min(len_k, start + m_end);  // keys any row of this tile can see
  const int n_tiles = (n_keys + kBlockN - 1) / kBlockN;

  const bf16* q_base = p.q + (int64_t{q_begin} + m_start) * p.q_stride + int64_t{h} * D;
  auto q_row = [&](int r) { return q_base + int64_t{r} * p.q_stride; };
  const int32_t* table = kPaged ? p.block_tables + int64_t{seq} * p.max_blocks_per_seq : nullptr;
  auto kv_offset = [&](int j) -> int64_t {
    if constexpr (kPaged) {
      const int64_t slot = int64_t{table[j / p.block_size]} * p.block_size + j % p.block_size;
      return (slot * p.n_kv_heads + kvh) * D;
    } else {
      return (int64_t{k_begin} + j) * p.kv_stride + int64_t{kvh} * D;
    }
  };
  const bf16* k_src = kPaged ? p.k_cache : p.k;
  const bf16* v_src = kPaged ? p.v_cache : p.v;

  LoadTile<D, kBlockM, kThreads>(s_q, 0, len_q - m_start, q_row);
  LoadTile<D, kBlockN, kThreads>(s_k, 0, len_k, [&](int j) { return k_src + kv_offset(j); });
  CpAsyncCommit();
  CpAsyncWaitAll();
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warp_row0 = warp * 16 * kMA;  // this warp's first query row in the tile
  // With one 16-row group per warp, Q fragments stay in registers; with two, they are
  // re-read from shared memory per tile (registers go to the second group's accumulators).
  uint32_t q_frag[kMA == 1 ? D / 16 : 1][4];
  if constexpr (kMA == 1) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      LdMatrixX4(q_frag[kk], s_q + Swz<D>(warp_row0 + (lane & 15), kk * 2 + (lane >> 4)));
    }
  }

  float o[kMA][D / 8][4];
#pragma unroll
  for (int a = 0; a < kMA; ++a) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[a][i][0] = o[a][i][1] = o[a][i][2] = o[a][i][3] = 0.0f;
  }
  float row_max[kMA][2], row_sum[kMA][2];  // row_sum: this thread's share, quad-summed at the end
#pragma unroll
  for (int a = 0; a < kMA; ++a) {
    row_max[a][0] = row_max[a][1] = -INFINITY;
    row_sum[a][0] = row_sum[a][1] = 0.0f;
  }
  // Position of fragment row lane/4 of group a; row lane/4 + 8 is 8 further.
  const int qpos_base = start + m_start + warp_row0 + (lane >> 2);
  const int first_qpos = start + m_start;

  for (int t = 0; t < n_tiles; ++t) {
    const int n_start = t * kBlockN;
    if (t > 0) {
      CpAsyncWaitAll();  // K tile t
      __syncthreads();   // also: every warp is done reading V tile t-1
    }
    LoadTile<D, kBlockN, kThreads>(s_v, n_start, len_k, [&](int j) { return v_src + kv_offset(j); });
    CpAsyncCommit();

    // S = Q Kᵀ for this warp's 16 * kMA rows x 64 keys.
    float s[kMA][kBlockN / 8][4];
#pragma unroll
    for (int a = 0; a < kMA; ++a) {
#pragma unroll
      for (int i = 0; i < kBlockN / 8; ++i) s[a][i][0] = s[a][i][1] = s[a][i][2] = s[a][i][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qf[kMA][4];
#pragma unroll
      for (int a = 0; a < kMA; ++a) {
        if constexpr (kMA == 1) {
#pragma unroll
          for (int i = 0; i < 4; ++i) qf[a][i] = q_frag[kk][i];
        } else {
          LdMatrixX4(qf[a], s_q + Swz<D>(warp_row0 + a * 16 + (lane & 15), kk * 2 + (lane >> 4)));
        }
      }
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t kf[4];
        LdMatrixX4(kf, s_k + Swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3),
                                    kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
        for (int a = 0; a < kMA; ++a) {
          MmaBf16(s[a][2 * np], qf[a], kf[0], kf[1]);
          MmaBf16(s[a][2 * np + 1], qf[a], kf[2], kf[3]);
        }
      }
    }

    // Scale to log2 units; mask keys past the causal diagonal or the sequence.
    const bool need_mask = n_start + kBlockN - 1 > first_qpos || n_start + kBlockN > len_k;
#pragma unroll
    for (int a = 0; a < kMA; ++a) {
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[a][nt][e] * p.scale_log2;
          if (need_mask) {
            const int key = n_start + nt * 8 + ((lane & 3) << 1) + (e & 1);
            const int qpos = qpos_base + a * 16 + (e < 2 ? 0 : 8);
            if (key > qpos || key >= len_k) x = -INFINITY;
          }
          s[a][nt][e] = x;
        }
      }
    }

    // Online softmax; each row's 64 scores are spread over the 4 lanes of a quad.
#pragma unroll
    for (int a = 0; a < kMA; ++a) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
          mx = fmaxf(mx, fmaxf(s[a][nt][2 * r], s[a][nt][2 * r + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float new_max = fmaxf(row_max[a][r], mx);
        const float base = new_max == -INFINITY ? 0.0f : new_max;  // fully masked so far
        const float alpha = exp2f(row_max[a][r] - base);
        row_max[a][r] = new_max;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
          s[a][nt][2 * r] = exp2f(s[a][nt][2 * r] - base);
          s[a][nt][2 * r + 1] = exp2f(s[a][nt][2 * r + 1] - base);
          sum += s[a][nt][2 * r] + s[a][nt][2 * r + 1];
        }
        row_sum[a][r] = row_sum[a][r] * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          o[a][dt][2 * r] *= alpha;
          o[a][dt][2 * r + 1] *= alpha;
        }
      }
    }

    CpAsyncWaitAll();  // V tile t
    __syncthreads();   // also: every warp is done reading K tile t
    if (t + 1 < n_tiles) {
      LoadTile<D, kBlockN, kThreads>(s_k, n_start + kBlockN, len_k,
                                     [&](int j) { return k_src + kv_offset(j); });
      CpAsyncCommit();
    }

    // O += P V; the S accumulator layout of two adjacent n-tiles is the A-fragment layout.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pf[kMA][4];
#pragma unroll
      for (int a = 0; a < kMA; ++a) {
        pf[a][0] = PackBf16x2(s[a][2 * kk][0], s[a][2 * kk][1]);
        pf[a][1] = PackBf16x2(s[a][2 * kk][2], s[a][2 * kk][3]);
        pf[a][2] = PackBf16x2(s[a][2 * kk + 1][0], s[a][2 * kk + 1][1]);
        pf[a][3] = PackBf16x2(s[a][2 * kk + 1][2], s[a][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vf[4];
        LdMatrixX4Trans(vf, s_v + Swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                         dp * 2 + (lane >> 4)));
#pragma unroll
        for (int a = 0; a < kMA; ++a) {
          MmaBf16(o[a][2 * dp], pf[a], vf[0], vf[1]);
          MmaBf16(o[a][2 * dp + 1], pf[a], vf[2], vf[3]);
        }
      }
    }
  }

  // Normalize and store this thread's rows.
#pragma unroll
  for (int a = 0; a < kMA; ++a) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[a][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int row = m_start + warp_row0 + a * 16 + (lane >> 2) + r * 8;
      if (row >= len_q) continue;
      bf16* dst =
          p.out + (int64_t{q_begin} + row) * p.out_stride + int64_t{h} * D + ((lane & 3) << 1);
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) =
            __floats2bfloat162_rn(o[a][dt][2 * r] * inv, o[a][dt][2 * r + 1] * inv);
      }
    }
  }
}

template <int D, bool kPaged, typename Cfg>
absl::Status Launch(const KernelParams& p, int n_heads, int max_seqlen_q, int n_seqs,
                    cudaStream_t stream) {
  constexpr int kSmem = (Cfg::kBlockM + 2 * kBlockN) * D * static_cast<int>(sizeof(bf16));
  const int64_t m_blocks = internal::CeilDiv(max_seqlen_q, Cfg::kBlockM);
  if (m_blocks > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttention: max_seqlen_q=", max_seqlen_q));
  }
  const dim3 grid(n_heads, static_cast<unsigned>(m_blocks), n_seqs);
  auto kernel = PrefillAttentionKernel<D, kPaged, Cfg>;
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<grid, Cfg::kThreads, kSmem, stream>>>(p);
  return internal::LaunchStatus("PrefillAttentionKernel");
}

template <typename Cfg>
absl::Status Dispatch(const KernelParams& p, const PrefillAttentionArgs& a, bool paged,
                      cudaStream_t stream) {
  const int h = a.n_heads, m = a.max_seqlen_q, n = a.n_seqs;
  if (a.head_dim == 64) {
    return paged ? Launch<64, true, Cfg>(p, h, m, n, stream)
                 : Launch<64, false, Cfg>(p, h, m, n, stream);
  }
  return paged ? Launch<128, true, Cfg>(p, h, m, n, stream)
               : Launch<128, false, Cfg>(p, h, m, n, stream);
}

// NOTE: set from kernels_bench on an H200 (2026-11-27, 32/8 heads, causal): at d 128 w4r32
// led at S 2048 and 8192 (231 and 286 TFLOP/s vs 215/260 w4o2, 193/242 w4o3, 160/229 w8);
// at d 64 (S 8192) w4o2 214 vs w8 178 (w4o3 and w4r32 not timed there).
constexpr internal::PrefillVariant kDefaultVariant128 = internal::PrefillVariant::kWarps4Rows32;
constexpr internal::PrefillVariant kDefaultVariant64 = internal::PrefillVariant::kWarps4Occ2;

}  // namespace

namespace internal {

const char* PrefillVariantName(PrefillVariant v) {
  switch (v) {
    case PrefillVariant::kDefault: return "default";
    case PrefillVariant::kWarps4Occ2: return "w4o2";
    case PrefillVariant::kWarps4Occ3: return "w4o3";
    case PrefillVariant::kWarps8: return "w8";
    case PrefillVariant::kWarps4Rows32: return "w4r32";
  }
  return "?";
}

absl::Status PrefillAttentionTuned(const PrefillAttentionArgs& a, PrefillVariant variant,
                                   cudaStream_t stream) {
  using internal::Aligned16;
  TANDEM_ARG_CHECK(a.head_dim == 64 || a.head_dim == 128, "head_dim=", a.head_dim);
  TANDEM_ARG_CHECK(a.n_heads > 0 && a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0,
                   "n_heads=", a.n_heads, " n_kv_heads=", a.n_kv_heads);
  TANDEM_ARG_CHECK(a.n_seqs >= 0 && a.n_seqs <= 65535, "n_seqs=", a.n_seqs);
  TANDEM_ARG_CHECK(a.max_seqlen_q >= 0, "max_seqlen_q=", a.max_seqlen_q);
  TANDEM_ARG_CHECK(a.scale > 0.0f && a.scale < FLT_MAX, "scale=", a.scale);
  if (a.n_seqs == 0 || a.max_seqlen_q == 0) return absl::OkStatus();
  TANDEM_ARG_CHECK(a.q != nullptr && a.out != nullptr && a.cu_seqlens_q != nullptr);
  const int64_t row = int64_t{a.n_heads} * a.head_dim;
  const int64_t q_stride = a.q_stride == 0 ? row : a.q_stride;
  const int64_t out_stride = a.out_stride == 0 ? row : a.out_stride;
  TANDEM_ARG_CHECK(q_stride >= row && q_stride % 8 == 0, "q_stride=", q_stride);
  TANDEM_ARG_CHECK(out_stride >= row && out_stride % 8 == 0, "out_stride=", out_stride);
  TANDEM_ARG_CHECK(Aligned16(a.q) && Aligned16(a.out), "q/out must be 16-byte aligned");

  KernelParams p{};
  p.q = a.q;
  p.out = a.out;
  p.q_stride = q_stride;
  p.out_stride = out_stride;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.n_heads = a.n_heads;
  p.group = a.n_heads / a.n_kv_heads;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.n_kv_heads = a.n_kv_heads;
  const bool paged = a.cache != nullptr;
  if (paged) {
    const PagedKvCache& c = *a.cache;
    TANDEM_ARG_CHECK(c.k != nullptr && c.v != nullptr && Aligned16(c.k) && Aligned16(c.v),
                     "cache k/v must be non-null and 16-byte aligned");
    TANDEM_ARG_CHECK(c.head_dim == a.head_dim && c.n_kv_heads == a.n_kv_heads,
                     "cache head_dim=", c.head_dim, " n_kv_heads=", c.n_kv_heads);
    TANDEM_ARG_CHECK(c.block_size > 0 && c.num_blocks > 0, "block_size=", c.block_size);
    TANDEM_ARG_CHECK(a.block_tables != nullptr && a.max_blocks_per_seq > 0 &&
                         a.start_pos != nullptr,
                     "max_blocks_per_seq=", a.max_blocks_per_seq);
    p.k_cache = c.k;
    p.v_cache = c.v;
    p.block_size = c.block_size;
    p.block_tables = a.block_tables;
    p.max_blocks_per_seq = a.max_blocks_per_seq;
    p.start_pos = a.start_pos;
  } else {
    TANDEM_ARG_CHECK(a.k != nullptr && a.v != nullptr && a.cu_seqlens_k != nullptr,
                     "contiguous mode needs k, v and cu_seqlens_k");
    const int64_t kv_row = int64_t{a.n_kv_heads} * a.head_dim;
    p.kv_stride = a.kv_stride == 0 ? kv_row : a.kv_stride;
    TANDEM_ARG_CHECK(p.kv_stride >= kv_row && p.kv_stride % 8 == 0, "kv_stride=", p.kv_stride);
    TANDEM_ARG_CHECK(Aligned16(a.k) && Aligned16(a.v), "k/v must be 16-byte aligned");
    p.k = a.k;
    p.v = a.v;
    p.cu_seqlens_k = a.cu_seqlens_k;
  }
  if (variant == PrefillVariant::kDefault) {
    variant = a.head_dim == 128 ? kDefaultVariant128 : kDefaultVariant64;
  }
  switch (variant) {
    case PrefillVariant::kWarps4Occ3:
      return Dispatch<Config<4, 3>>(p, a, paged, stream);
    case PrefillVariant::kWarps8:
      return Dispatch<Config<8, 1>>(p, a, paged, stream);
    case PrefillVariant::kWarps4Rows32:
      return Dispatch<Config<4, 1, 2>>(p, a, paged, stream);
    default:
      return Dispatch<Config<4, 2>>(p, a, paged, stream);
  }
}

}  // namespace internal

absl::Status PrefillAttention(const PrefillAttentionArgs& args, cudaStream_t stream) {
  return internal::PrefillAttentionTuned(args, internal::PrefillVariant::kDefault, stream);
}

}  // namespace tandem::cuda
