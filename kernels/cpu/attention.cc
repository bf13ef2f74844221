#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/logging.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_math.h"

namespace tandem {
namespace {

// Queries of one sequence handled together by one work item, per query head: the item's K/V
// spans are read (and, for many rows, converted to fp32) once for kQueryTile × (heads per KV
// head) rows.
constexpr int kQueryTile = 16;

// Converts `count` token rows of the layer's K and V, token_stride elements apart starting
// at element `base`, to k_dst and v_dst ([count, head_dim] fp32). head_dim % 8 == 0.
void LoadRows(const PagedKvLayer& layer, int64_t base, int count, int64_t token_stride,
              float* k_dst, float* v_dst) {
  const int hd = layer.head_dim;
  if (layer.dtype == KvDtype::kF32) {
    for (int t = 0; t < count; ++t) {
      std::copy_n(static_cast<const float*>(layer.k) + base + t * token_stride, hd, k_dst + t * hd);
      std::copy_n(static_cast<const float*>(layer.v) + base + t * token_stride, hd, v_dst + t * hd);
    }
    return;
  }
  const uint16_t* k = static_cast<const uint16_t*>(layer.k) + base;
  const uint16_t* v = static_cast<const uint16_t*>(layer.v) + base;
  for (int t = 0; t < count; ++t, k += token_stride, v += token_stride) {
    float* kd = k_dst + t * hd;
    float* vd = v_dst + t * hd;
    for (int d = 0; d < hd; d += 8) {
      _mm256_storeu_ps(kd + d,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + d))));
      _mm256_storeu_ps(vd + d,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + d))));
    }
  }
}

struct Scratch {
  std::vector<float> k;             // [span_keys + 8, head_dim]: the span's keys in fp32
  std::vector<float> v;             // [span_keys, head_dim]
  std::vector<float> s;             // [rows, span_keys + 8]: scores, then probabilities
  std::vector<float> o;             // [rows, head_dim]: unnormalized outputs
  std::vector<float> m;             // [rows]: running max of the scores
  std::vector<float> l;             // [rows]: running sum of exp(score - m)
  std::vector<int64_t> block_base;  // [blocks per span]: element offset of each block's rows
};

// out[t] = q · k[t] for 8 keys (k: [8, hd], row-major), as one vector: eight 8-lane
// partial sums, then a transpose-and-add tree instead of eight horizontal sums.
inline __m256 Dot8Keys(const float* q, const float* k, int hd) {
  __m256 a[8];
  for (int t = 0; t < 8; ++t) a[t] = _mm256_setzero_ps();
  for (int d = 0; d < hd; d += 8) {
    const __m256 qd = _mm256_loadu_ps(q + d);
    for (int t = 0; t < 8; ++t) a[t] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + t * hd + d), a[t]);
  }
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  // u0 = [k0..k3 low-half sums | k0..k3 high-half sums], u1 likewise for k4..k7.
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// o[0, 8 * NC) = o * corr + Σ_{t < n} p[t] * v[t, 0, 8 * NC), v rows hd apart; o stays in
// registers across the keys.
template <int NC>
inline void AccumulatePv(float* o, float corr, const float* p, const float* v, int n, int hd) {
  __m256 acc[NC];
  const __m256 c = _mm256_set1_ps(corr);
  for (int i = 0; i < NC; ++i) acc[i] = _mm256_mul_ps(_mm256_loadu_ps(o + 8 * i), c);
  for (int t = 0; t < n; ++t) {
    const __m256 pt = _mm256_broadcast_ss(p + t);
    const float* vt = v + static_cast<size_t>(t) * hd;
    for (int i = 0; i < NC; ++i) acc[i] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * i), acc[i]);
  }
  for (int i = 0; i < NC; ++i) _mm256_storeu_ps(o + 8 * i, acc[i]);
}

void AccumulatePvAnyDim(float* o, float corr, const float* p, const float* v, int n, int hd) {
  int d = 0;
  for (; d + 64 <= hd; d += 64) AccumulatePv<8>(o + d, corr, p, v + d, n, hd);
  for (; d < hd; d += 8) AccumulatePv<1>(o + d, corr, p, v + d, n, hd);
}

// Dot8Keys reading fp16 keys in place: key t's row starts at k + t * stride.
inline __m256 Dot8KeysF16(const float* q, const uint16_t* k, int64_t stride, int hd) {
  __m256 a[8];
  for (int t = 0; t < 8; ++t) a[t] = _mm256_setzero_ps();
  for (int d = 0; d < hd; d += 8) {
    const __m256 qd = _mm256_loadu_ps(q + d);
    for (int t = 0; t < 8; ++t) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(k + t * stride + d));
      a[t] = _mm256_fmadd_ps(qd, _mm256_cvtph_ps(h), a[t]);
    }
  }
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// AccumulatePv reading fp16 values in place: value t's row starts at v + t * stride.
template <int NC>
inline void AccumulatePvF16(float* o, float corr, const float* p, const uint16_t* v, int n,
                            int64_t stride) {
  __m256 acc[NC];
  const __m256 c = _mm256_set1_ps(corr);
  for (int i = 0; i < NC; ++i) acc[i] = _mm256_mul_ps(_mm256_loadu_ps(o + 8 * i), c);
  for (int t = 0; t < n; ++t) {
    const __m256 pt = _mm256_broadcast_ss(p + t);
    const uint16_t* vt = v + t * stride;
    for (int i = 0; i < NC; ++i) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vt + 8 * i));
      acc[i] = _mm256_fmadd_ps(pt, _mm256_cvtph_ps(h), acc[i]);
    }
  }
  for (int i = 0; i < NC; ++i) _mm256_storeu_ps(o + 8 * i, acc[i]);
}

// Keys are visited in spans of about this many: scores, softmax and P·V run a span at a time
// (the online-softmax rescale happens once per span), and the span's K and V, converted to
// fp32 once, serve every row of the item from L1.
constexpr int kSpanKeys = 64;

// Items with at most this many rows read fp16 K/V in place instead of converting them.
constexpr int kDirectMaxRows = 8;

// Element offset of the first row of logical block `blk` of `seq`, at `kv_head`, in the
// layer's K (or V) array; rows of the block follow token_stride apart.
inline int64_t BlockOffset(const AttentionSeq& seq, const PagedKvLayer& layer, int blk,
                           int64_t token_stride, int kv_head) {
  const int64_t phys = seq.block_table[blk];
  CHECK(phys >= 0 && phys < layer.num_blocks) << "block " << phys << " of " << layer.num_blocks;
  return phys * layer.block_size * token_stride + static_cast<int64_t>(kv_head) * layer.head_dim;
}

// One work item: queries [q_begin, q_end) of `seq`, all query heads of KV head `kv_head`.
// Row r of the item is (query q_begin + r / group, head kv_head * group + r % group). A
// row's arithmetic depends only on its own query and keys, not on the item's other rows.
void AttendItem(const AttentionSeq& seq, int q_begin, int q_end, int kv_head,
                const PagedKvLayer& layer, int n_heads, float scale, Scratch& sc) {
  const int hd = layer.head_dim;
  const int bs = layer.block_size;
  const int blocks_per_span = std::max(1, kSpanKeys / bs);
  const int span_keys = blocks_per_span * bs;
  const int s_stride = span_keys + 8;
  const int group = n_heads / layer.n_kv_heads;
  const int rows = (q_end - q_begin) * group;
  const int64_t token_stride = static_cast<int64_t>(layer.n_kv_heads) * hd;
  // Padding rows of k are read (and masked) by the last group of 8 keys; keep them finite.
  if (sc.k.size() < static_cast<size_t>(s_stride) * hd)
    sc.k.resize(static_cast<size_t>(s_stride) * hd, 0.0f);
  sc.v.resize(static_cast<size_t>(span_keys) * hd);
  sc.s.resize(static_cast<size_t>(rows) * s_stride);
  sc.o.assign(static_cast<size_t>(rows) * hd, 0.0f);
  sc.m.assign(rows, -std::numeric_limits<float>::infinity());
  sc.l.assign(rows, 0.0f);

  const int last_pos = seq.start_pos + q_end - 1;  // the last key any row may see
  const int n_keys_total = last_pos + 1;
  const int64_t elem_bytes = KvDtypeBytes(layer.dtype);
  // Few rows (decode): read fp16 K and V in place. Converting a span to fp32 first pays off
  // only when many rows reuse it. Both give the same numbers: the conversion is exact.
  const bool direct = layer.dtype == KvDtype::kF16 && bs % 8 == 0 && rows <= kDirectMaxRows;
  const uint16_t* k16 = static_cast<const uint16_t*>(layer.k);
  const uint16_t* v16 = static_cast<const uint16_t*>(layer.v);
  sc.block_base.resize(blocks_per_span);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int key0 = 0; key0 < n_keys_total; key0 += span_keys) {
    const int n_keys = std::min(span_keys, n_keys_total - key0);
    for (int t0 = 0; t0 < n_keys; t0 += bs) {
      const int blk = (key0 + t0) / bs;  // spans start on block boundaries
      const int64_t base = BlockOffset(seq, layer, blk, token_stride, kv_head);
      sc.block_base[t0 / bs] = base;
      // The cache is read once per step and, for big batches, is far larger than the
      // caches: fetch the next block while this one is converted.
      if ((blk + 1) * bs < n_keys_total) {
        const int64_t next = BlockOffset(seq, layer, blk + 1, token_stride, kv_head) * elem_bytes;
        for (int t = 0; t < bs; ++t) {
          for (int64_t byte = 0; byte < hd * elem_bytes; byte += 64) {
            const int64_t at = next + t * token_stride * elem_bytes + byte;
            _mm_prefetch(static_cast<const char*>(layer.k) + at, _MM_HINT_T0);
            _mm_prefetch(static_cast<const char*>(layer.v) + at, _MM_HINT_T0);
          }
        }
      }
      if (!direct) {
        LoadRows(layer, base, std::min(n_keys, t0 + bs) - t0, token_stride,
                 sc.k.data() + static_cast<size_t>(t0) * hd,
                 sc.v.data() + static_cast<size_t>(t0) * hd);
      }
    }

    for (int r = 0; r < rows; ++r) {
      const int q = q_begin + r / group;
      const int head = kv_head * group + r % group;
      const int visible = std::min(n_keys, seq.start_pos + q - key0 + 1);  // causal
      if (visible <= 0) continue;
      const float* qr = seq.q + (static_cast<int64_t>(q) * n_heads + head) * hd;
      float* sr = sc.s.data() + static_cast<size_t>(r) * s_stride;

      // Scores, 8 keys per vector; lanes past `visible` become -inf.
      const __m256 vscale = _mm256_set1_ps(scale);
      __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
      for (int t0 = 0; t0 < visible; t0 += 8) {
        const __m256 dots =
            direct ? Dot8KeysF16(qr, k16 + sc.block_base[t0 / bs] + (t0 % bs) * token_stride,
                                 token_stride, hd)
                   : Dot8Keys(qr, sc.k.data() + static_cast<size_t>(t0) * hd, hd);
        __m256 x = _mm256_mul_ps(dots, vscale);
        if (visible - t0 < 8) {
          const __m256 keep =
              _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(visible - t0), lane));
          x = _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), x, keep);
        }
        _mm256_storeu_ps(sr + t0, x);
        vmax = _mm256_max_ps(vmax, x);
      }
      const float m_new = std::max(sc.m[r], simd::HorizontalMax(vmax));
      const float correction = std::exp(sc.m[r] - m_new);  // 0 on the first span
      sc.m[r] = m_new;

      // p = exp(s - m_new); -inf lanes (Exp clamps, not to 0) are zeroed explicitly.
      const __m256 vm = _mm256_set1_ps(m_new);
      __m256 vsum = _mm256_setzero_ps();
      for (int t0 = 0; t0 < visible; t0 += 8) {
        const __m256 x = _mm256_loadu_ps(sr + t0);
        __m256 p = simd::Exp(_mm256_sub_ps(x, vm));
        p = _mm256_and_ps(
            p,
            _mm256_cmp_ps(x, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_NEQ_OQ));
        _mm256_storeu_ps(sr + t0, p);
        vsum = _mm256_add_ps(vsum, p);
      }
      sc.l[r] = sc.l[r] * correction + simd::HorizontalSum(vsum);

      float* o = sc.o.data() + static_cast<size_t>(r) * hd;
      if (direct) {
        // Block by block; the correction applies once (x * 1.0f is exact after that).
        for (int t0 = 0; t0 < visible; t0 += bs) {
          const uint16_t* vb = v16 + sc.block_base[t0 / bs];
          const int nt = std::min(bs, visible - t0);
          const float c = t0 == 0 ? correction : 1.0f;
          int d = 0;
          for (; d + 64 <= hd; d += 64)
            AccumulatePvF16<8>(o + d, c, sr + t0, vb + d, nt, token_stride);
          for (; d < hd; d += 8) AccumulatePvF16<1>(o + d, c, sr + t0, vb + d, nt, token_stride);
        }
      } else if (hd == 64) {
        AccumulatePv<8>(o, correction, sr, sc.v.data(), visible, hd);
      } else {
        AccumulatePvAnyDim(o, correction, sr, sc.v.data(), visible, hd);
      }
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int q = q_begin + r / group;
    const int head = kv_head * group + r % group;
    float* out = seq.out + (static_cast<int64_t>(q) * n_heads + head) * hd;
    const __m256 inv = _mm256_set1_ps(1.0f / sc.l[r]);
    const float* o = sc.o.data() + static_cast<size_t>(r) * hd;
    for (int d = 0; d < hd; d += 8) {
      _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), inv));
    }
  }
}

struct WorkItem {
  int seq;
  int q_begin;
  int q_end;
  int kv_head;
};

}  // namespace

void WritePagedKv(const float* k, const float* v, const int64_t* slots, int64_t n,
                  const PagedKvLayer& layer) {
  const int64_t token_elems = static_cast<int64_t>(layer.n_kv_heads) * layer.head_dim;
  const int64_t num_slots = layer.num_blocks * layer.block_size;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = slots[i];
    CHECK(slot >= 0 && slot < num_slots) << "slot " << slot << " of " << num_slots;
    // [num_blocks, block_size, ...] is contiguous over slots: slot s starts at s * token_elems.
    const int64_t dst = slot * token_elems;
    if (layer.dtype == KvDtype::kF32) {
      std::copy_n(k + i * token_elems, token_elems, static_cast<float*>(layer.k) + dst);
      std::copy_n(v + i * token_elems, token_elems, static_cast<float*>(layer.v) + dst);
    } else {
      QuantizeRow(GgmlType::kF16, k + i * token_elems, static_cast<uint16_t*>(layer.k) + dst,
                  token_elems);
      QuantizeRow(GgmlType::kF16, v + i * token_elems, static_cast<uint16_t*>(layer.v) + dst,
                  token_elems);
    }
  }
}

void PagedAttention(absl::Span<const AttentionSeq> seqs, const PagedKvLayer& layer, int n_heads,
                    float scale, ThreadPool& pool) {
  CHECK_GT(layer.n_kv_heads, 0);
  CHECK_EQ(n_heads % layer.n_kv_heads, 0)
      << "n_heads " << n_heads << " n_kv_heads " << layer.n_kv_heads;
  CHECK_EQ(layer.head_dim % 8, 0) << "head_dim " << layer.head_dim;
  // Items of one sequence, from the most expensive (last query tile, longest causal span)
  // down, so the dynamic schedule below ends with short items.
  std::vector<WorkItem> items;
  for (int s = 0; s < static_cast<int>(seqs.size()); ++s) {
    for (int q0 = 0; q0 < seqs[s].n_q; q0 += kQueryTile) {
      for (int g = 0; g < layer.n_kv_heads; ++g) {
        items.push_back({s, q0, std::min(seqs[s].n_q, q0 + kQueryTile), g});
      }
    }
  }
  std::sort(items.begin(), items.end(), [&](const WorkItem& a, const WorkItem& b) {
    return seqs[a.seq].start_pos + a.q_end > seqs[b.seq].start_pos + b.q_end;
  });
  // Each item writes its own rows of out, and a row's arithmetic does not depend on which
  // thread runs it or what else is in the batch, so the schedule can be dynamic.
  std::atomic<size_t> next{0};
  auto work = [&](int, int) {
    thread_local Scratch scratch;
    for (size_t i = next.fetch_add(1); i < items.size(); i = next.fetch_add(1)) {
      const WorkItem& it = items[i];
      AttendItem(seqs[it.seq], it.q_begin, it.q_end, it.kv_head, layer, n_heads, scale, scratch);
    }
  };
  if (items.size() <= 1) {
    work(0, 1);
  } else {
    pool.Run(work);
  }
}

}  // namespace tandem
