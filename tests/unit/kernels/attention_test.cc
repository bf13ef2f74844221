#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quant.h"

namespace tandem {
namespace {

std::vector<float> Random(int64_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

struct SeqSpec {
  int start_pos;
  int n_q;
};

struct SeqData {
  std::vector<float> k, v;  // [len, n_kv_heads, head_dim], as the cache holds them
  std::vector<float> q;     // [n_q, n_heads, head_dim]
  std::vector<float> out;   // [n_q, n_heads, head_dim]
  std::vector<int32_t> block_table;
};

// Contiguous causal GQA attention in double.
std::vector<double> Reference(const SeqData& s, const SeqSpec& spec, int n_heads, int n_kv, int hd,
                              float scale) {
  std::vector<double> out(static_cast<size_t>(spec.n_q) * n_heads * hd, 0.0);
  const int group = n_heads / n_kv;
  for (int i = 0; i < spec.n_q; ++i) {
    const int pos = spec.start_pos + i;
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / group;
      const float* q = s.q.data() + (static_cast<size_t>(i) * n_heads + h) * hd;
      std::vector<double> w(pos + 1);
      double max = -1e300;
      for (int t = 0; t <= pos; ++t) {
        const float* k = s.k.data() + (static_cast<size_t>(t) * n_kv + g) * hd;
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += double{q[d]} * k[d];
        w[t] = dot * scale;
        max = std::max(max, w[t]);
      }
      double sum = 0;
      for (double& x : w) sum += x = std::exp(x - max);
      double* o = out.data() + (static_cast<size_t>(i) * n_heads + h) * hd;
      for (int t = 0; t <= pos; ++t) {
        const float* v = s.v.data() + (static_cast<size_t>(t) * n_kv + g) * hd;
        for (int d = 0; d < hd; ++d) o[d] += w[t] / sum * v[d];
      }
    }
  }
  return out;
}

struct Case {
  KvDtype dtype;
  int block_size;
  int n_heads;
  int n_kv;
  int head_dim;
  std::vector<SeqSpec> seqs;
  int threads;
};

void RunCase(const Case& c) {
  std::mt19937 rng(1234);
  int total_blocks = 0;
  for (const SeqSpec& s : c.seqs)
    total_blocks += (s.start_pos + s.n_q + c.block_size - 1) / c.block_size;
  const int num_blocks = total_blocks + 5;  // a few unused blocks
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);

  const int64_t token_elems = int64_t{c.n_kv} * c.head_dim;
  const size_t elem = c.dtype == KvDtype::kF16 ? 2 : 4;
  std::vector<uint8_t> k_cache(num_blocks * c.block_size * token_elems * elem, 0xff);
  std::vector<uint8_t> v_cache(k_cache.size(), 0xff);
  PagedKvLayer layer{k_cache.data(), v_cache.data(), c.dtype,   num_blocks,
                     c.block_size,   c.n_kv,         c.head_dim};

  std::vector<SeqData> data(c.seqs.size());
  std::vector<AttentionSeq> attn;
  int next_id = 0;
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const SeqSpec& spec = c.seqs[i];
    SeqData& s = data[i];
    const int len = spec.start_pos + spec.n_q;
    s.k = Random(len * token_elems, rng);
    s.v = Random(len * token_elems, rng);
    s.q = Random(int64_t{spec.n_q} * c.n_heads * c.head_dim, rng);
    s.out.assign(s.q.size(), NAN);
    for (int b = 0; b < (len + c.block_size - 1) / c.block_size; ++b) {
      s.block_table.push_back(ids[next_id++]);
    }
    // Written in two calls with the slots out of order, as prefill then decode would.
    std::vector<int64_t> slots(len);
    for (int t = 0; t < len; ++t) {
      slots[t] = int64_t{s.block_table[t / c.block_size]} * c.block_size + t % c.block_size;
    }
    const int half = len / 2;
    WritePagedKv(s.k.data() + half * token_elems, s.v.data() + half * token_elems,
                 slots.data() + half, len - half, layer);
    WritePagedKv(s.k.data(), s.v.data(), slots.data(), half, layer);
    if (c.dtype == KvDtype::kF16) {  // the reference sees what the cache holds
      for (float& x : s.k) x = HalfToFloat(FloatToHalf(x));
      for (float& x : s.v) x = HalfToFloat(FloatToHalf(x));
    }
    attn.push_back({s.q.data(), s.out.data(), spec.n_q, spec.start_pos, s.block_table.data()});
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ThreadPool pool(c.threads);
  PagedAttention(attn, layer, c.n_heads, scale, pool);
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const std::vector<double> ref =
        Reference(data[i], c.seqs[i], c.n_heads, c.n_kv, c.head_dim, scale);
    for (size_t e = 0; e < ref.size(); ++e) {
      ASSERT_NEAR(data[i].out[e], ref[e], 2e-5) << "seq " << i << " element " << e;
    }
  }

  // Each sequence alone gives bit-identical outputs (batch invariance).
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    std::vector<float> alone(data[i].out.size());
    AttentionSeq one = attn[i];
    one.out = alone.data();
    PagedAttention({&one, 1}, layer, c.n_heads, scale, pool);
    EXPECT_EQ(std::memcmp(alone.data(), data[i].out.data(), alone.size() * sizeof(float)), 0)
        << "seq " << i;
  }
}

TEST(PagedAttentionTest, DecodeF16) {
  RunCase({KvDtype::kF16, 16, 9, 3, 64, {{0, 1}, {5, 1}, {16, 1}, {100, 1}, {47, 1}}, 2});
}

TEST(PagedAttentionTest, DecodeF32) {
  RunCase({KvDtype::kF32, 16, 9, 3, 64, {{0, 1}, {15, 1}, {31, 1}, {77, 1}}, 3});
}

TEST(PagedAttentionTest, PrefillChunksF16) {
  RunCase({KvDtype::kF16, 16, 9, 3, 64, {{0, 40}, {33, 17}, {64, 1}, {7, 70}}, 2});
}

TEST(PagedAttentionTest, PrefillF32OddBlockSizeAndMha) {
  RunCase({KvDtype::kF32, 5, 4, 4, 32, {{0, 13}, {9, 23}, {3, 1}}, 2});
}

TEST(PagedAttentionTest, LargeHeadDimGqa8) {
  RunCase({KvDtype::kF16, 32, 8, 1, 128, {{200, 3}, {0, 33}}, 1});
}

TEST(WritePagedKvTest, WritesTheRightSlot) {
  const int bs = 4, n_kv = 2, hd = 8;
  std::vector<float> k_cache(3 * bs * n_kv * hd, 0.0f), v_cache(k_cache.size(), 0.0f);
  PagedKvLayer layer{k_cache.data(), v_cache.data(), KvDtype::kF32, 3, bs, n_kv, hd};
  std::vector<float> k(n_kv * hd), v(n_kv * hd);
  for (int i = 0; i < n_kv * hd; ++i) {
    k[i] = static_cast<float>(i + 1);
    v[i] = -static_cast<float>(i + 1);
  }
  const int64_t slot = 2 * bs + 3;  // block 2, row 3
  WritePagedKv(k.data(), v.data(), &slot, 1, layer);
  for (size_t i = 0; i < k_cache.size(); ++i) {
    const int64_t token = i / (n_kv * hd);
    const float expect = token == slot ? static_cast<float>(i % (n_kv * hd) + 1) : 0.0f;
    EXPECT_EQ(k_cache[i], expect) << i;
    EXPECT_EQ(v_cache[i], -expect) << i;
  }
}

}  // namespace
}  // namespace tandem
