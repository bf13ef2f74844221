// Row-wise and element-wise CUDA kernels against double-precision references computed from
// the same bf16 inputs.
//
// Tolerances: a kernel that computes in fp32 and rounds once to bf16 is off by at most half
// a bf16 ulp, i.e. 2^-8 = 3.9e-3 relative; rtol = 8e-3 leaves a 2x margin. Copies (embedding,
// KV write, bf16 -> fp32) and argmax must match exactly.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace tandem::cuda {
namespace {

using testing::DeviceBuffer;
using testing::DownloadBf16;
using testing::RandomBf16;
using testing::RoundBf16;
using testing::TestSeed;

constexpr double kRtolBf16 = 8e-3;

bf16* B(const DeviceBuffer<bf16>& b) { return b.get(); }

TEST(EmbeddingGatherTest, CopiesRowsAndZeroesBadIds) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (int64_t dim : {576, 100, 4096, 7}) {  // 100 and 7: the scalar path
    const int64_t vocab = 1000, n = 37;
    const auto table = RandomBf16(vocab * dim, rng);
    std::vector<int32_t> ids(n);
    std::uniform_int_distribution<int32_t> id_dist(0, vocab - 1);
    for (auto& id : ids) id = id_dist(rng);
    ids[3] = -1;
    ids[5] = static_cast<int32_t>(vocab);
    ids[6] = static_cast<int32_t>(vocab - 1);
    DeviceBuffer<bf16> d_table(table.bits);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<bf16> d_out(n * dim);
    ASSERT_TRUE(EmbeddingGather(B(d_table), d_ids.get(), n, vocab, dim, B(d_out), nullptr).ok());
    SYNC_OR_FAIL();
    const auto out = d_out.Download<uint16_t>();
    for (int64_t t = 0; t < n; ++t) {
      const bool bad = ids[t] < 0 || ids[t] >= vocab;
      for (int64_t i = 0; i < dim; ++i) {
        const uint16_t want = bad ? 0 : table.bits[ids[t] * dim + i];
        ASSERT_EQ(out[t * dim + i], want) << "dim=" << dim << " t=" << t << " i=" << i;
      }
    }
  }
}

// Reference RMSNorm of one row, in double.
std::vector<double> RefRmsNorm(const float* x, const float* w, int64_t dim, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += double{x[i]} * x[i];
  const double inv = 1.0 / std::sqrt(ss / dim + eps);
  std::vector<double> out(dim);
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * inv * w[i];
  return out;
}

TEST(RmsNormTest, MatchesReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  const float eps = 1e-5f;
  for (int64_t dim : {576, 4096, 1000, 13}) {
    for (int64_t rows : {1, 7, 33}) {
      const auto x = RandomBf16(rows * dim, rng, -3.0f, 3.0f);
      const auto w = RandomBf16(dim, rng, 0.5f, 1.5f);
      DeviceBuffer<bf16> d_x(x.bits), d_w(w.bits), d_out(rows * dim);
      ASSERT_TRUE(RmsNorm(B(d_x), B(d_w), rows, dim, eps, B(d_out), nullptr).ok());
      // In place (out aliases x) must give the same result.
      ASSERT_TRUE(RmsNorm(B(d_x), B(d_w), rows, dim, eps, B(d_x), nullptr).ok());
      SYNC_OR_FAIL();
      std::vector<double> ref;
      for (int64_t r = 0; r < rows; ++r) {
        const auto row = RefRmsNorm(&x.values[r * dim], w.values.data(), dim, eps);
        ref.insert(ref.end(), row.begin(), row.end());
      }
      const std::vector<double> atol{1e-6};
      SCOPED_TRACE("dim=" + std::to_string(dim) + " rows=" + std::to_string(rows));
      EXPECT_ALL_CLOSE(DownloadBf16(d_out), ref, kRtolBf16, atol);
      EXPECT_ALL_CLOSE(DownloadBf16(d_x), ref, kRtolBf16, atol);
    }
  }
}

TEST(AddRmsNormTest, UpdatesResidualAndNormalizes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  const float eps = 1e-5f;
  for (int64_t dim : {576, 2048, 999}) {
    for (int64_t rows : {1, 5, 64}) {
      const auto res = RandomBf16(rows * dim, rng, -4.0f, 4.0f);
      const auto x = RandomBf16(rows * dim, rng, -1.0f, 1.0f);
      const auto w = RandomBf16(dim, rng, 0.5f, 1.5f);
      DeviceBuffer<bf16> d_res(res.bits), d_x(x.bits), d_w(w.bits), d_out(rows * dim);
      ASSERT_TRUE(
          AddRmsNorm(B(d_res), B(d_x), B(d_w), rows, dim, eps, B(d_out), nullptr).ok());
      SYNC_OR_FAIL();
      // The kernel normalizes the residual as stored (rounded to bf16).
      std::vector<float> new_res(rows * dim);
      std::vector<double> ref_res(rows * dim), ref_out;
      for (size_t i = 0; i < new_res.size(); ++i) {
        new_res[i] = RoundBf16(res.values[i] + x.values[i]);
        ref_res[i] = double{res.values[i]} + x.values[i];
      }
      for (int64_t r = 0; r < rows; ++r) {
        const auto row = RefRmsNorm(&new_res[r * dim], w.values.data(), dim, eps);
        ref_out.insert(ref_out.end(), row.begin(), row.end());
      }
      const std::vector<double> atol{1e-6};
      SCOPED_TRACE("dim=" + std::to_string(dim) + " rows=" + std::to_string(rows));
      EXPECT_ALL_CLOSE(DownloadBf16(d_res), ref_res, kRtolBf16, atol);
      EXPECT_ALL_CLOSE(DownloadBf16(d_out), ref_out, kRtolBf16, atol);
    }
  }
}

// RoPE tolerance: besides the output rounding (2^-8 relative), the fp32 angle
// pos * theta^(-2i/d) carries ~1e-7 * pos relative error (<= 1e-3 rad at pos 8192), so each
// element may be off by 4e-3 * (|x0| + |x1|) of its pair.
TEST(RopeTest, BothLayoutsMatchReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (const RopeLayout layout : {RopeLayout::kAdjacentPairs, RopeLayout::kHalfSplit}) {
    for (const int head_dim : {64, 128, 6}) {
      for (const int n_heads : {3, 9}) {
        for (const int64_t n_tokens : {1, 5, 37}) {
          // Rotate only the first n_heads of a wider (fused QKV-like) row.
          const int64_t stride = int64_t{n_heads + 2} * head_dim;
          const float theta = head_dim == 128 ? 500000.0f : 10000.0f;
          const auto x = RandomBf16(n_tokens * stride, rng, -2.0f, 2.0f);
          std::vector<int32_t> pos(n_tokens);
          std::uniform_int_distribution<int32_t> pos_dist(0, 8191);
          for (auto& p : pos) p = pos_dist(rng);
          pos[0] = 0;
          DeviceBuffer<bf16> d_x(x.bits);
          DeviceBuffer<int32_t> d_pos(pos);
          ASSERT_TRUE(Rope(B(d_x), d_pos.get(), n_tokens, n_heads, head_dim, stride, theta,
                           layout, nullptr)
                          .ok());
          SYNC_OR_FAIL();
          std::vector<double> ref(x.values.begin(), x.values.end());
          std::vector<double> atol(ref.size(), 0.0);
          const int half = head_dim / 2;
          for (int64_t t = 0; t < n_tokens; ++t) {
            for (int h = 0; h < n_heads; ++h) {
              const int64_t base = t * stride + int64_t{h} * head_dim;
              for (int i = 0; i < half; ++i) {
                const bool adj = layout == RopeLayout::kAdjacentPairs;
                const int64_t i0 = base + (adj ? 2 * i : i);
                const int64_t i1 = base + (adj ? 2 * i + 1 : i + half);
                const double freq = std::pow(double{theta}, -2.0 * i / head_dim);
                const double a = pos[t] * freq;
                const double x0 = x.values[i0], x1 = x.values[i1];
                ref[i0] = x0 * std::cos(a) - x1 * std::sin(a);
                ref[i1] = x0 * std::sin(a) + x1 * std::cos(a);
                atol[i0] = atol[i1] = 4e-3 * (std::abs(x0) + std::abs(x1)) + 1e-6;
              }
            }
          }
          SCOPED_TRACE(std::string(layout == RopeLayout::kAdjacentPairs ? "adjacent" : "half") +
                       " head_dim=" + std::to_string(head_dim) +
                       " n_heads=" + std::to_string(n_heads) +
                       " n_tokens=" + std::to_string(n_tokens));
          EXPECT_ALL_CLOSE(DownloadBf16(d_x), ref, 4e-3, atol);  // untouched tail: exact
        }
      }
    }
  }
}

TEST(SwiGluTest, MatchesReferenceDenseAndStrided) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (int64_t dim : {1536, 100, 8192}) {
    for (int64_t rows : {1, 5, 17}) {
      for (bool fused : {false, true}) {
        // fused: one [rows, 2*dim] buffer, gate then up in each row.
        const int64_t stride = fused ? 2 * dim : dim;
        const auto g = RandomBf16(rows * stride, rng, -6.0f, 6.0f);
        const auto u = RandomBf16(rows * stride, rng, -2.0f, 2.0f);
        DeviceBuffer<bf16> d_g(g.bits), d_u(u.bits), d_out(rows * dim);
        const bf16* gate = B(d_g);
        const bf16* up = fused ? B(d_g) + dim : B(d_u);
        ASSERT_TRUE(
            SwiGlu(gate, up, rows, dim, fused ? stride : 0, B(d_out), nullptr).ok());
        SYNC_OR_FAIL();
        std::vector<double> ref(rows * dim);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t i = 0; i < dim; ++i) {
            const double gv = g.values[r * stride + i];
            const double uv = fused ? g.values[r * stride + dim + i] : u.values[r * stride + i];
            ref[r * dim + i] = gv / (1.0 + std::exp(-gv)) * uv;
          }
        }
        const std::vector<double> atol{1e-6};
        SCOPED_TRACE("dim=" + std::to_string(dim) + " rows=" + std::to_string(rows) +
                     (fused ? " fused" : ""));
        EXPECT_ALL_CLOSE(DownloadBf16(d_out), ref, kRtolBf16, atol);
      }
    }
  }
}

TEST(WritePagedKvTest, WritesSlotsAndSkipsNegative) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (const int n_kv : {1, 3, 8}) {
    for (const int head_dim : {64, 128}) {
      const int block_size = 16;
      const int64_t num_blocks = 11, n = 37;
      const int64_t row = int64_t{n_kv} * head_dim;
      const int64_t stride = row + 16;  // tokens inside a wider buffer
      const auto k = RandomBf16(n * stride, rng), v = RandomBf16(n * stride, rng);
      std::vector<int64_t> all(num_blocks * block_size);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      std::vector<int64_t> slots(all.begin(), all.begin() + n);
      slots[4] = -1;
      slots[20] = -1;
      const uint16_t kSentinel = 0x7fc1;  // a NaN pattern: any stray write changes it
      std::vector<uint16_t> init(num_blocks * block_size * row, kSentinel);
      DeviceBuffer<bf16> d_k(k.bits), d_v(v.bits), d_kc(init), d_vc(init);
      DeviceBuffer<int64_t> d_slots(slots);
      PagedKvCache cache{B(d_kc), B(d_vc), num_blocks, block_size, n_kv, head_dim};
      ASSERT_TRUE(WritePagedKv(B(d_k), B(d_v), d_slots.get(), n, stride, cache, nullptr).ok());
      SYNC_OR_FAIL();
      std::vector<uint16_t> want_k = init, want_v = init;
      for (int64_t t = 0; t < n; ++t) {
        if (slots[t] < 0) continue;
        std::copy_n(&k.bits[t * stride], row, &want_k[slots[t] * row]);
        std::copy_n(&v.bits[t * stride], row, &want_v[slots[t] * row]);
      }
      EXPECT_TRUE(d_kc.Download<uint16_t>() == want_k) << "n_kv=" << n_kv << " d=" << head_dim;
      EXPECT_TRUE(d_vc.Download<uint16_t>() == want_v) << "n_kv=" << n_kv << " d=" << head_dim;
    }
  }
}

TEST(ArgmaxRowsTest, FirstMaximumIgnoringNan) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (int64_t vocab : {49152, 32000, 1001}) {
    for (int64_t rows : {1, 3, 64}) {
      std::vector<float> logits(rows * vocab);
      for (auto& l : logits) l = dist(rng);
      std::uniform_int_distribution<int64_t> col(0, vocab - 1);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = &logits[r * vocab];
        if (r % 3 == 1) {  // a tie: the first index must win
          const int64_t a = col(rng), b = col(rng);
          row[a] = row[b] = 100.0f;
        }
        if (r % 3 == 2) row[col(rng)] = std::nanf("");
      }
      std::vector<int32_t> want(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = &logits[r * vocab];
        int64_t best = -1;
        for (int64_t i = 0; i < vocab; ++i) {
          if (std::isnan(row[i])) continue;
          if (best < 0 || row[i] > row[best]) best = i;
        }
        want[r] = static_cast<int32_t>(best);
      }
      DeviceBuffer<float> d_logits(logits);
      DeviceBuffer<int32_t> d_out(rows);
      ASSERT_TRUE(ArgmaxRows(d_logits.get(), rows, vocab, d_out.get(), nullptr).ok());
      SYNC_OR_FAIL();
      EXPECT_EQ(d_out.Download(), want) << "vocab=" << vocab << " rows=" << rows;
    }
  }
}

TEST(Bf16ToF32Test, ExactCopy) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (int64_t n : {1, 1000, 123457}) {
    const auto x = RandomBf16(n, rng, -100.0f, 100.0f);
    DeviceBuffer<bf16> d_in(x.bits);
    DeviceBuffer<float> d_out(n);
    ASSERT_TRUE(Bf16ToF32(B(d_in), n, d_out.get(), nullptr).ok());
    SYNC_OR_FAIL();
    EXPECT_EQ(d_out.Download(), x.values) << "n=" << n;
  }
}

// Host-side validation rejects bad arguments before touching the device (no GPU needed).
TEST(ArgumentValidationTest, RejectsBadArguments) {
  bf16* p = reinterpret_cast<bf16*>(uintptr_t{256});
  int32_t* ip = reinterpret_cast<int32_t*>(uintptr_t{256});
  EXPECT_TRUE(absl::IsInvalidArgument(
      Rope(p, ip, 4, 2, 7, 0, 10000.0f, RopeLayout::kHalfSplit, nullptr)));
  EXPECT_TRUE(absl::IsInvalidArgument(RmsNorm(p, p, 4, 0, 1e-5f, p, nullptr)));
  EXPECT_TRUE(absl::IsInvalidArgument(AddRmsNorm(p, p, p, 4, 8, 1e-5f, p, nullptr)));
  EXPECT_TRUE(absl::IsInvalidArgument(SwiGlu(p, p, 4, 8, 4, p, nullptr)));
  PagedKvCache cache{p, p, 4, 16, 2, 60};
  EXPECT_TRUE(absl::IsInvalidArgument(WritePagedKv(p, p, nullptr, 1, 0, cache, nullptr)));
  PrefillAttentionArgs pa;
  pa.q = p;
  pa.out = p;
  pa.cu_seqlens_q = ip;
  pa.n_seqs = 1;
  pa.max_seqlen_q = 4;
  pa.n_heads = 4;
  pa.n_kv_heads = 3;  // not a divisor
  pa.head_dim = 128;
  pa.scale = 0.1f;
  pa.k = pa.v = p;
  pa.cu_seqlens_k = ip;
  EXPECT_TRUE(absl::IsInvalidArgument(PrefillAttention(pa, nullptr)));
  pa.n_kv_heads = 2;
  pa.head_dim = 96;  // unsupported
  EXPECT_TRUE(absl::IsInvalidArgument(PrefillAttention(pa, nullptr)));
  DecodeAttentionArgs da;
  da.q = p;
  da.out = p;
  da.seq_lens = ip;
  da.block_tables = ip;
  da.max_blocks_per_seq = 2;
  da.batch = 1;
  da.max_seq_len = 100;  // > 2 blocks of 16
  da.n_heads = 4;
  da.scale = 0.1f;
  PagedKvCache dc{p, p, 4, 16, 2, 128};
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeAttention(da, dc, nullptr)));
}

}  // namespace
}  // namespace tandem::cuda
