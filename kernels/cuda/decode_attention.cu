// Paged decode attention (one query token per sequence), flash-decoding style.
//
// Grid over (partition, kv head, sequence). A CTA reads one KV head's keys and values over
// one partition of the context exactly once, for all G = n_heads / n_kv_heads query heads of
// the group, in three steps:
//   1. scores: 4-16 lanes per key row, each lane dots 16-byte pieces of the row with its
//      slice of the G queries (fp32); shuffles finish the dot; scores land in shared memory
//      [G, partition];
//   2. softmax statistics per head (one warp per head);
//   3. values: D/8 lanes per value row, 16 bytes each, accumulate p · v for the G heads,
//      then reduce across the CTA's row groups through shared memory.
// With one partition the CTA writes the normalized output; otherwise it writes its
// unnormalized sum with the running max and sum, and DecodeReduceKernel merges partitions.
//
// Two implementations (internal::DecodeVariant) share the plan, the math and the workspace:
//  - registers: every lane loads its key/value rows straight into registers (__ldg, 2-4
//    rows in flight), looking the block id up in global memory before each row load;
//  - pipelined: the partition's row offsets are resolved once into shared memory, then its
//    K tiles and V tiles (8 KiB each) stream through a kStages-deep cp.async ring, so
//    (kStages - 1) tiles per CTA stay in flight through the compute, the softmax barrier and
//    the switch from keys to values.
#include <algorithm>
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
using internal::DecodeVariant;
using internal::Ldg16;
using internal::Unpack8;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPartition = 512;
constexpr int kMinPartition = 64;
constexpr float kLog2e = 1.4426950408889634f;

// NOTE: the implementation DecodeAttention (and so the GPU tests) uses; kRegisters is the
// previous kernel, kept as a fallback: kernels_bench times both and checks that their
// outputs agree.
constexpr DecodeVariant kDefaultDecodeVariant = DecodeVariant::kPipelined;

// Pipelined variant: bytes per K or V tile (32 rows at head dim 128, 64 at 64) and ring depth.
// 4 stages: 3 tiles (24 KiB) in flight per CTA; 44 KiB of shared memory per CTA at G = 4 (52
// at G = 8), so 4 CTAs per SM (the register limit) keep ~96 KiB per SM in flight, several
// times the ~25 KiB that bandwidth x latency (3.4 TB/s x ~1 us / 132 SMs) asks for.
constexpr int kTileBytes = 8192;
constexpr int kStages = 4;
constexpr int kPipelinedMinCtasPerSm = 4;

struct Plan {
  int partition = kMaxPartition;  // keys per CTA
  int n_splits = 1;
  size_t workspace_bytes = 0;
};

// Shrinks partitions until the grid fills the GPU a few times over (short contexts, small
// batches), but never below 64 keys. Shared by both variants, so the workspace size does
// not depend on the variant.
Plan MakePlan(int batch, int n_heads, int n_kv_heads, int head_dim, int max_seq_len) {
  Plan plan;
  const int64_t want_ctas = int64_t{internal::NumSms()} * 4;
  const int64_t len = std::max(max_seq_len, 1);
  while (plan.partition > kMinPartition &&
         int64_t{batch} * n_kv_heads * internal::CeilDiv(len, plan.partition) < want_ctas) {
    plan.partition /= 2;
  }
  plan.n_splits = static_cast<int>(internal::CeilDiv(len, plan.partition));
  if (plan.n_splits > 1) {
    const size_t rows = size_t(batch) * n_heads * plan.n_splits;
    // [rows, head_dim] fp32 partial outputs, then [rows] maxima and [rows] sums.
    plan.workspace_bytes = rows * head_dim * sizeof(float) + 2 * rows * sizeof(float);
  }
  return plan;
}

struct KernelParams {
  const bf16* q;
  bf16* out;
  const bf16* k_cache;
  const bf16* v_cache;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  int max_blocks_per_seq;
  int block_size;
  int n_heads, n_kv_heads;
  int partition, n_splits;
  float scale_log2;
  float* part_out;  // [batch, n_heads, n_splits, D]
  float* part_max;  // [batch, n_heads, n_splits]
  float* part_sum;  // [batch, n_heads, n_splits]
};

// Smallest power of two >= max(4, G * D / 64), at most D / 8.
constexpr int LanesPerRow(int d, int g) {
  int lanes = 4;
  while (lanes < d / 8 && lanes * 64 < g * d) lanes *= 2;
  return lanes;
}

// ---- registers variant ------------------------------------------------------------------

template <int D, int G>
__global__ void __launch_bounds__(kThreads)
    DecodeRegistersKernel(const KernelParams p) {
  constexpr int kChunks = D / 8;  // 16-byte pieces of one row
  // Scores: kLanesPerRow lanes share a key row, so that each lane's slice of the G queries
  // stays within 64 fp32 registers.
  constexpr int kLanesPerRow = LanesPerRow(D, G);
  constexpr int kChunksPerLane = kChunks / kLanesPerRow;
  static_assert(kChunksPerLane >= 1 && kChunks % kLanesPerRow == 0);
  constexpr int kRowGroups = kThreads / kChunks;  // values: rows in flight per CTA pass
  extern __shared__ __align__(16) float smem[];
  float* s_scores = smem;                    // [G, partition]
  float* s_red = smem + G * p.partition;     // [kWarps, G, D]
  __shared__ float s_max[G], s_sum[G];

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int seq_len = p.seq_lens[b];
  const int begin = split * p.partition;
  const int end = min(begin + p.partition, seq_len);
  const int n = end - begin;  // may be <= 0: an empty partition of a shorter sequence
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h0 = kvh * G;
  const int32_t* table = p.block_tables + int64_t{b} * p.max_blocks_per_seq;
  const int64_t row_stride = int64_t{p.n_kv_heads} * D;
  auto row_offset = [&](int pos) -> int64_t {
    const int64_t slot = int64_t{table[pos / p.block_size]} * p.block_size + pos % p.block_size;
    return slot * row_stride + int64_t{kvh} * D;
  };

  if (n <= 0) {
    if (p.n_splits == 1) {  // seq_len == 0: zero output
      for (int i = threadIdx.x; i < G * D; i += kThreads) {
        p.out[(int64_t{b} * p.n_heads + h0) * D + i] = __float2bfloat16(0.0f);
      }
    } else if (threadIdx.x < G) {
      const int64_t r = (int64_t{b} * p.n_heads + h0 + threadIdx.x) * p.n_splits + split;
      p.part_max[r] = -INFINITY;
      p.part_sum[r] = 0.0f;
    }
    return;
  }

  // ---- 1. scores ----
  const int sub = lane % kLanesPerRow;  // which pieces of the row this lane dots
  float qf[G][kChunksPerLane * 8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const bf16* qh = p.q + (int64_t{b} * p.n_heads + h0 + g) * D;
#pragma unroll
    for (int i = 0; i < kChunksPerLane; ++i) {
      Unpack8(Ldg16(qh + (sub + kLanesPerRow * i) * 8), &qf[g][i * 8]);
#pragma unroll
      for (int j = 0; j < 8; ++j) qf[g][i * 8 + j] *= p.scale_log2;
    }
  }
  constexpr int kRowsPerWarp = 32 / kLanesPerRow;
  constexpr int kRowsPerPass = kWarps * kRowsPerWarp;
  constexpr int kUnroll = 2;
  const int row_in_pass = warp * kRowsPerWarp + lane / kLanesPerRow;
  for (int base = 0; base < n; base += kRowsPerPass * kUnroll) {
    uint4 kr[kUnroll][kChunksPerLane];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int r = base + u * kRowsPerPass + row_in_pass;
      if (r < n) {
        const bf16* row = p.k_cache + row_offset(begin + r);
#pragma unroll
        for (int i = 0; i < kChunksPerLane; ++i) {
          kr[u][i] = Ldg16(row + (sub + kLanesPerRow * i) * 8);
        }
      } else {
#pragma unroll
        for (int i = 0; i < kChunksPerLane; ++i) kr[u][i] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float acc[G];
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < kChunksPerLane; ++i) {
        float kv[8];
        Unpack8(kr[u][i], kv);
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[g] = fmaf(qf[g][i * 8 + j], kv[j], acc[g]);
        }
      }
      const int r = base + u * kRowsPerPass + row_in_pass;
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int off = 1; off < kLanesPerRow; off <<= 1) {
          acc[g] += __shfl_xor_sync(0xffffffffu, acc[g], off);
        }
        if (sub == 0 && r < n) s_scores[g * p.partition + r] = acc[g];
      }
    }
  }
  __syncthreads();

  // ---- 2. softmax statistics (scores are already in log2 units) ----
  for (int g = warp; g < G; g += kWarps) {
    float* sc = s_scores + g * p.partition;
    float mx = -INFINITY;
    for (int i = lane; i < n; i += 32) mx = fmaxf(mx, sc[i]);
    mx = internal::WarpMax(mx);
    float sum = 0.0f;
    for (int i = lane; i < n; i += 32) {
      const float e = exp2f(sc[i] - mx);
      sc[i] = e;
      sum += e;
    }
    sum = internal::WarpSum(sum);
    if (lane == 0) {
      s_max[g] = mx;
      s_sum[g] = sum;
    }
  }
  __syncthreads();

  // ---- 3. values ----
  const int chunk = threadIdx.x % kChunks;
  const int group = threadIdx.x / kChunks;
  float acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.0f;
  }
  constexpr int kVUnroll = 4;
  for (int base = group; base < n; base += kRowGroups * kVUnroll) {
    uint4 vr[kVUnroll];
#pragma unroll
    for (int u = 0; u < kVUnroll; ++u) {
      const int r = base + u * kRowGroups;
      vr[u] = r < n ? Ldg16(p.v_cache + row_offset(begin + r) + chunk * 8) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kVUnroll; ++u) {
      const int r = base + u * kRowGroups;
      if (r >= n) break;
      float v[8];
      Unpack8(vr[u], v);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float pr = s_scores[g * p.partition + r];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(pr, v[j], acc[g][j]);
      }
    }
  }
  // Reduce the row groups: first inside the warp (groups 32/kChunks apart in lanes), then
  // across warps through shared memory.
#pragma unroll
  for (int off = kChunks; off < 32; off <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], off);
    }
  }
  if (lane < kChunks) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) s_red[(warp * G + g) * D + chunk * 8 + j] = acc[g][j];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += s_red[(w * G + g) * D + d];
    const int h = h0 + g;
    if (p.n_splits == 1) {
      p.out[(int64_t{b} * p.n_heads + h) * D + d] = __float2bfloat16(total / s_sum[g]);
    } else {
      const int64_t r = (int64_t{b} * p.n_heads + h) * p.n_splits + split;
      p.part_out[r * D + d] = total;
      if (d == 0) {
        p.part_max[r] = s_max[g];
        p.part_sum[r] = s_sum[g];
      }
    }
  }
}

// ---- pipelined variant ------------------------------------------------------------------

template <int N>
__device__ __forceinline__ void CpAsyncWaitGroup() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Grid (kv head, partition, sequence): the CTAs of one (sequence, partition) are launched
// side by side, so the n_kv_heads slices of each cache row are read at about the same time.
//
// Pipeline: step s < n_tiles loads K tile s, step n_tiles + s loads V tile s, into ring slot
// s % kStages; one cp.async group is committed per step (empty past the last tile), so at
// step t `wait_group(kStages - 2)` means steps <= t have landed. Each step waits, syncs (the
// slot of step t - 1 is then free), issues step t + kStages - 1 into that slot and computes.
template <int D, int G>
__global__ void __launch_bounds__(kThreads, kPipelinedMinCtasPerSm)
    DecodePipelinedKernel(const KernelParams p) {
  constexpr int kChunks = D / 8;                           // 16-byte pieces of one row
  constexpr int kTileRows = kTileBytes / (D * 2);          // 32 keys at head dim 128, 64 at 64
  constexpr int kCopies = kTileRows * kChunks / kThreads;  // cp.async per thread per tile
  constexpr int kLanesPerRow = LanesPerRow(D, G);
  constexpr int kChunksPerLane = kChunks / kLanesPerRow;
  constexpr int kRowsPerWarp = 32 / kLanesPerRow;
  constexpr int kRowsPerPass = kWarps * kRowsPerWarp;  // scores: rows per CTA pass
  constexpr int kRowGroups = kThreads / kChunks;       // values: rows per CTA pass
  static_assert(kChunksPerLane >= 1 && kChunks % kLanesPerRow == 0);
  static_assert(kCopies >= 1 && kTileRows * kChunks % kThreads == 0);
  static_assert(kTileRows % kRowsPerPass == 0 && kTileRows % kRowGroups == 0);
  static_assert(kMinPartition % kTileRows == 0, "a partition is a whole number of tiles");
  static_assert(kStages >= 2);
  static_assert(kWarps * G * D * sizeof(float) <= size_t{kStages} * kTileBytes,
                "s_red fits in the ring");
  extern __shared__ __align__(16) unsigned char pipe_smem[];
  bf16* s_ring = reinterpret_cast<bf16*>(pipe_smem);  // [kStages, kTileRows, D], swizzled
  float* s_scores = reinterpret_cast<float*>(pipe_smem + kStages * kTileBytes);  // [G, partition]
  int64_t* s_off = reinterpret_cast<int64_t*>(s_scores + G * p.partition);       // [partition]
  float* s_red = reinterpret_cast<float*>(pipe_smem);  // [kWarps, G, D], the ring once drained
  __shared__ float s_max[G], s_sum[G];

  const int kvh = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
  const int seq_len = p.seq_lens[b];
  const int begin = split * p.partition;
  const int end = min(begin + p.partition, seq_len);
  const int n = end - begin;  // may be <= 0: an empty partition of a shorter sequence
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h0 = kvh * G;

  if (n <= 0) {
    if (p.n_splits == 1) {  // seq_len == 0: zero output
      for (int i = threadIdx.x; i < G * D; i += kThreads) {
        p.out[(int64_t{b} * p.n_heads + h0) * D + i] = __float2bfloat16(0.0f);
      }
    } else if (threadIdx.x < G) {
      const int64_t r = (int64_t{b} * p.n_heads + h0 + threadIdx.x) * p.n_splits + split;
      p.part_max[r] = -INFINITY;
      p.part_sum[r] = 0.0f;
    }
    return;
  }

  // Queries (this lane's slice, pre-scaled into log2 units), loaded while the block ids are.
  const int sub = lane % kLanesPerRow;  // which pieces of a key row this lane dots
  float qf[G][kChunksPerLane * 8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const bf16* qh = p.q + (int64_t{b} * p.n_heads + h0 + g) * D;
#pragma unroll
    for (int i = 0; i < kChunksPerLane; ++i) {
      Unpack8(Ldg16(qh + (sub + kLanesPerRow * i) * 8), &qf[g][i * 8]);
#pragma unroll
      for (int j = 0; j < 8; ++j) qf[g][i * 8 + j] *= p.scale_log2;
    }
  }
  // Element offset of every key row of the partition (this KV head's slice): the block table
  // is read once here, off the load path of the tiles.
  {
    const int32_t* table = p.block_tables + int64_t{b} * p.max_blocks_per_seq;
    const int64_t row_stride = int64_t{p.n_kv_heads} * D;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int pos = begin + i;
      const int64_t slot = int64_t{table[pos / p.block_size]} * p.block_size + pos % p.block_size;
      s_off[i] = slot * row_stride + int64_t{kvh} * D;
    }
  }
  __syncthreads();

  // Chunk c of tile row r is stored at chunk c ^ Swizzle(r). With 4 lanes per key row a
  // quarter warp reads 4 chunks of each of 2 rows, whose 128-byte bank windows coincide (rows
  // are 128 or 256 bytes); the XOR moves odd rows to the other half of the window. Every
  // other access (copies, values, wider score groups) touches 8 chunks of one row: XOR with a
  // value < 8 only permutes them within their window.
  auto swizzle = [](int row) { return (row * kLanesPerRow) & 7; };
  const int n_tiles = (n + kTileRows - 1) / kTileRows;
  auto issue = [&](int step) {
    if (step < 2 * n_tiles) {
      const bool values = step >= n_tiles;
      const int row0 = (values ? step - n_tiles : step) * kTileRows;
      const bf16* src = values ? p.v_cache : p.k_cache;
      bf16* dst = s_ring + (step % kStages) * (kTileRows * D);
#pragma unroll
      for (int j = 0; j < kCopies; ++j) {
        const int idx = threadIdx.x + j * kThreads;
        const int r = idx / kChunks, c = idx % kChunks;
        const bool valid = row0 + r < n;  // rows past the sequence are zero-filled, not read
        CpAsync16(dst + r * D + (c ^ swizzle(r)) * 8, valid ? src + s_off[row0 + r] + c * 8 : src,
                  valid);
      }
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int step = 0; step < kStages - 1; ++step) issue(step);

  // ---- 1. scores ----
  const int row_in_pass = warp * kRowsPerWarp + lane / kLanesPerRow;
  for (int t = 0; t < n_tiles; ++t) {
    CpAsyncWaitGroup<kStages - 2>();
    __syncthreads();
    issue(t + kStages - 1);
    const bf16* tile = s_ring + (t % kStages) * (kTileRows * D);
#pragma unroll
    for (int pass = 0; pass < kTileRows / kRowsPerPass; ++pass) {
      const int r = pass * kRowsPerPass + row_in_pass;
      float acc[G];
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < kChunksPerLane; ++i) {
        float kv[8];
        Unpack8(*reinterpret_cast<const uint4*>(tile + r * D +
                                                ((sub + kLanesPerRow * i) ^ swizzle(r)) * 8),
                kv);
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[g] = fmaf(qf[g][i * 8 + j], kv[j], acc[g]);
        }
      }
      const int key = t * kTileRows + r;
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int off = 1; off < kLanesPerRow; off <<= 1) {
          acc[g] += __shfl_xor_sync(0xffffffffu, acc[g], off);
        }
        if (sub == 0 && key < n) s_scores[g * p.partition + key] = acc[g];
      }
    }
  }
  __syncthreads();

  // ---- 2. softmax statistics (scores are already in log2 units); V tiles keep landing ----
  const int n_padded = n_tiles * kTileRows;  // <= partition
  for (int g = warp; g < G; g += kWarps) {
    float* sc = s_scores + g * p.partition;
    float mx = -INFINITY;
    for (int i = lane; i < n; i += 32) mx = fmaxf(mx, sc[i]);
    mx = internal::WarpMax(mx);
    float sum = 0.0f;
    for (int i = lane; i < n; i += 32) {
      const float e = exp2f(sc[i] - mx);
      sc[i] = e;
      sum += e;
    }
    for (int i = n + lane; i < n_padded; i += 32) sc[i] = 0.0f;  // the last tile's zero rows
    sum = internal::WarpSum(sum);
    if (lane == 0) {
      s_max[g] = mx;
      s_sum[g] = sum;
    }
  }
  __syncthreads();

  // ---- 3. values ----
  const int chunk = threadIdx.x % kChunks;
  const int group = threadIdx.x / kChunks;
  float acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.0f;
  }
  for (int t = n_tiles; t < 2 * n_tiles; ++t) {
    CpAsyncWaitGroup<kStages - 2>();
    __syncthreads();
    issue(t + kStages - 1);
    const bf16* tile = s_ring + (t % kStages) * (kTileRows * D);
    const float* probs = s_scores + (t - n_tiles) * kTileRows;  // [G, partition] from row0
#pragma unroll
    for (int k = 0; k < kTileRows / kRowGroups; ++k) {
      const int r = group + k * kRowGroups;
      float v[8];
      Unpack8(*reinterpret_cast<const uint4*>(tile + r * D + (chunk ^ swizzle(r)) * 8), v);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float pr = probs[g * p.partition + r];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(pr, v[j], acc[g][j]);
      }
    }
  }
  CpAsyncWaitAll();  // only empty groups are left; the ring becomes s_red below
  // Reduce the row groups: first inside the warp (groups 32/kChunks apart in lanes), then
  // across warps through shared memory.
#pragma unroll
  for (int off = kChunks; off < 32; off <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], off);
    }
  }
  __syncthreads();  // every warp is done reading the ring
  if (lane < kChunks) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) s_red[(warp * G + g) * D + chunk * 8 + j] = acc[g][j];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += s_red[(w * G + g) * D + d];
    const int h = h0 + g;
    if (p.n_splits == 1) {
      p.out[(int64_t{b} * p.n_heads + h) * D + d] = __float2bfloat16(total / s_sum[g]);
    } else {
      const int64_t r = (int64_t{b} * p.n_heads + h) * p.n_splits + split;
      p.part_out[r * D + d] = total;
      if (d == 0) {
        p.part_max[r] = s_max[g];
        p.part_sum[r] = s_sum[g];
      }
    }
  }
}

// ---- partition merge and launch -----------------------------------------------------------

// One CTA per (head, sequence), one thread per output element: merges the partitions.
template <int D>
__global__ void __launch_bounds__(D)
    DecodeReduceKernel(const KernelParams p) {
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int64_t r0 = (int64_t{b} * p.n_heads + h) * p.n_splits;
  const int used = min(p.n_splits, (p.seq_lens[b] + p.partition - 1) / p.partition);
  float mx = -INFINITY;
  for (int s = 0; s < used; ++s) mx = fmaxf(mx, p.part_max[r0 + s]);
  float num = 0.0f, den = 0.0f;
  for (int s = 0; s < used; ++s) {
    const float w = exp2f(p.part_max[r0 + s] - mx);
    num += w * p.part_out[(r0 + s) * D + d];
    den += w * p.part_sum[r0 + s];
  }
  p.out[(int64_t{b} * p.n_heads + h) * D + d] = __float2bfloat16(den > 0.0f ? num / den : 0.0f);
}

template <int D, int G>
absl::Status LaunchRegisters(const KernelParams& p, int batch, cudaStream_t stream) {
  const size_t smem = (size_t(G) * p.partition + size_t(kWarps) * G * D) * sizeof(float);
  auto kernel = DecodeRegistersKernel<D, G>;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(p.n_splits, p.n_kv_heads, batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return internal::LaunchStatus("DecodeRegistersKernel");
}

template <int D, int G>
absl::Status LaunchPipelined(const KernelParams& p, int batch, cudaStream_t stream) {
  // Ring, scores [G, partition] fp32, row offsets [partition] int64: at most 52 KiB.
  const size_t smem = size_t{kStages} * kTileBytes + size_t(G) * p.partition * sizeof(float) +
                      size_t(p.partition) * sizeof(int64_t);
  auto kernel = DecodePipelinedKernel<D, G>;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  // Several CTAs' rings per SM: ask for the largest shared-memory carveout (the tiles bypass
  // L1 anyway).
  TANDEM_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  const dim3 grid(p.n_kv_heads, p.n_splits, batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return internal::LaunchStatus("DecodePipelinedKernel");
}

template <int D, int G>
absl::Status Launch(const KernelParams& p, DecodeVariant variant, int batch, cudaStream_t stream) {
  if (variant == DecodeVariant::kRegisters) {
    RETURN_IF_ERROR((LaunchRegisters<D, G>(p, batch, stream)));
  } else {
    RETURN_IF_ERROR((LaunchPipelined<D, G>(p, batch, stream)));
  }
  if (p.n_splits > 1) {
    DecodeReduceKernel<D><<<dim3(p.n_heads, batch), D, 0, stream>>>(p);
    RETURN_IF_ERROR(internal::LaunchStatus("DecodeReduceKernel"));
  }
  return absl::OkStatus();
}

template <int D>
absl::Status LaunchForGroup(const KernelParams& p, DecodeVariant variant, int group, int batch,
                            cudaStream_t stream) {
  switch (group) {
    case 1: return Launch<D, 1>(p, variant, batch, stream);
    case 2: return Launch<D, 2>(p, variant, batch, stream);
    case 3: return Launch<D, 3>(p, variant, batch, stream);
    case 4: return Launch<D, 4>(p, variant, batch, stream);
    case 5: return Launch<D, 5>(p, variant, batch, stream);
    case 6: return Launch<D, 6>(p, variant, batch, stream);
    case 7: return Launch<D, 7>(p, variant, batch, stream);
    case 8: return Launch<D, 8>(p, variant, batch, stream);
  }
  return absl::InvalidArgumentError(absl::StrCat("DecodeAttention: group size ", group));
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionArgs& a, const PagedKvCache& cache) {
  return MakePlan(a.batch, a.n_heads, cache.n_kv_heads, cache.head_dim, a.max_seq_len)
      .workspace_bytes;
}

namespace internal {

const char* DecodeVariantName(DecodeVariant v) {
  switch (v) {
    case DecodeVariant::kDefault: return "default";
    case DecodeVariant::kRegisters: return "regs";
    case DecodeVariant::kPipelined: return "pipe";
  }
  return "?";
}

absl::Status DecodeAttentionTuned(const DecodeAttentionArgs& a, const PagedKvCache& c,
                                  DecodeVariant variant, cudaStream_t stream) {
  using internal::Aligned16;
  TANDEM_ARG_CHECK(variant == DecodeVariant::kDefault || variant == DecodeVariant::kRegisters ||
                       variant == DecodeVariant::kPipelined,
                   "variant=", static_cast<int>(variant));
  TANDEM_ARG_CHECK(c.head_dim == 64 || c.head_dim == 128, "head_dim=", c.head_dim);
  TANDEM_ARG_CHECK(c.n_kv_heads > 0 && a.n_heads > 0 && a.n_heads % c.n_kv_heads == 0 &&
                       a.n_heads / c.n_kv_heads <= 8,
                   "n_heads=", a.n_heads, " n_kv_heads=", c.n_kv_heads);
  TANDEM_ARG_CHECK(a.batch >= 0 && a.batch <= 65535, "batch=", a.batch);
  TANDEM_ARG_CHECK(a.max_seq_len >= 0, "max_seq_len=", a.max_seq_len);
  TANDEM_ARG_CHECK(a.scale > 0.0f && a.scale < FLT_MAX, "scale=", a.scale);
  if (a.batch == 0) return absl::OkStatus();
  TANDEM_ARG_CHECK(a.q != nullptr && a.out != nullptr && a.seq_lens != nullptr &&
                   a.block_tables != nullptr && a.max_blocks_per_seq > 0);
  TANDEM_ARG_CHECK(c.k != nullptr && c.v != nullptr && c.block_size > 0 && c.num_blocks > 0);
  TANDEM_ARG_CHECK(Aligned16(a.q) && Aligned16(c.k) && Aligned16(c.v),
                   "q and the cache must be 16-byte aligned");
  TANDEM_ARG_CHECK(int64_t{a.max_blocks_per_seq} * c.block_size >= a.max_seq_len,
                   "max_blocks_per_seq=", a.max_blocks_per_seq, " block_size=", c.block_size,
                   " max_seq_len=", a.max_seq_len);
  const Plan plan = MakePlan(a.batch, a.n_heads, c.n_kv_heads, c.head_dim, a.max_seq_len);
  TANDEM_ARG_CHECK(plan.workspace_bytes == 0 ||
                       (a.workspace != nullptr && a.workspace_bytes >= plan.workspace_bytes),
                   "workspace_bytes=", a.workspace_bytes, " need ", plan.workspace_bytes);
  // The pipelined grid puts the KV heads on grid x, the registers grid the splits.
  TANDEM_ARG_CHECK(plan.n_splits <= 65535, "max_seq_len=", a.max_seq_len);
  KernelParams p{};
  p.q = a.q;
  p.out = a.out;
  p.k_cache = c.k;
  p.v_cache = c.v;
  p.seq_lens = a.seq_lens;
  p.block_tables = a.block_tables;
  p.max_blocks_per_seq = a.max_blocks_per_seq;
  p.block_size = c.block_size;
  p.n_heads = a.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.partition = plan.partition;
  p.n_splits = plan.n_splits;
  p.scale_log2 = a.scale * kLog2e;
  if (plan.n_splits > 1) {
    const size_t rows = size_t(a.batch) * a.n_heads * plan.n_splits;
    p.part_out = static_cast<float*>(a.workspace);
    p.part_max = p.part_out + rows * c.head_dim;
    p.part_sum = p.part_max + rows;
  }
  if (variant == DecodeVariant::kDefault) variant = kDefaultDecodeVariant;
  const int group = a.n_heads / c.n_kv_heads;
  if (c.head_dim == 64) return LaunchForGroup<64>(p, variant, group, a.batch, stream);
  return LaunchForGroup<128>(p, variant, group, a.batch, stream);
}

}  // namespace internal

absl::Status DecodeAttention(const DecodeAttentionArgs& args, const PagedKvCache& cache,
                             cudaStream_t stream) {
  return internal::DecodeAttentionTuned(args, cache, DecodeVariant::kDefault, stream);
}

}  // namespace tandem::cuda
