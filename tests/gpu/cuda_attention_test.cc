// Prefill (contiguous and paged/chunked) and paged decode attention against a double
// precision causal GQA reference computed from the same bf16 inputs.
//
// Tolerance: q, k, v are uniform in [-1, 1] (q wider, to sharpen the softmax), so every
// output is an average of values with |v| <= 1. The prefill kernel rounds the softmax
// probabilities to bf16 before P·V (as FlashAttention does), which costs up to 2^-9 of
// max|v| per element; the output is rounded to bf16 (2^-9 relative). Both kernels accumulate
// in fp32. Per element we allow |got - ref| <= 1e-2 + 1e-2 * |ref|, and the relative L2
// error over the whole output must stay below 1e-2 (typically ~3e-3).
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/tuning.h"
#include "tests/gpu/gpu_test_util.h"

namespace tandem::cuda {
namespace {

using testing::CheckClose;
using testing::DeviceBuffer;
using testing::DownloadBf16;
using testing::RandomBf16;
using testing::TestSeed;

constexpr double kAtol = 1e-2;
constexpr double kRtol = 1e-2;
constexpr double kMaxRelL2 = 1e-2;

// Returns the [n_kv_heads, head_dim] floats of key (or value) j.
using RowAt = std::function<const float*(int)>;

// out[i, h, :] for queries at positions start + i over keys [0, start + i].
void RefAttention(const float* q, int n_q, int start, int n_heads, int n_kv_heads, int head_dim,
                  double scale, const RowAt& k_at, const RowAt& v_at, double* out) {
  const int group = n_heads / n_kv_heads;
  std::vector<double> scores;
  for (int i = 0; i < n_q; ++i) {
    const int n_keys = start + i + 1;
    scores.resize(n_keys);
    for (int h = 0; h < n_heads; ++h) {
      const float* qh = q + (int64_t{i} * n_heads + h) * head_dim;
      const int kvh = h / group;
      double mx = -INFINITY;
      for (int j = 0; j < n_keys; ++j) {
        const float* kj = k_at(j) + int64_t{kvh} * head_dim;
        double dot = 0;
        for (int d = 0; d < head_dim; ++d) dot += double{qh[d]} * kj[d];
        scores[j] = dot * scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0;
      for (int j = 0; j < n_keys; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
      double* o = out + (int64_t{i} * n_heads + h) * head_dim;
      std::fill(o, o + head_dim, 0.0);
      for (int j = 0; j < n_keys; ++j) {
        const float* vj = v_at(j) + int64_t{kvh} * head_dim;
        const double p = scores[j] / sum;
        for (int d = 0; d < head_dim; ++d) o[d] += p * vj[d];
      }
    }
  }
}

void ExpectAttentionClose(const std::vector<float>& got, const std::vector<double>& ref,
                          const std::string& what) {
  const auto r = CheckClose(got, ref, kRtol, {kAtol});
  EXPECT_EQ(r.failures, 0u) << what << ": " << r.Describe(got, ref);
  EXPECT_LT(r.rel_l2, kMaxRelL2) << what << ": " << r.Describe(got, ref);
  std::cout << "[ error    ] " << what << " max_abs=" << r.max_abs_err << " rel_l2=" << r.rel_l2
            << std::endl;
}

struct Shape {
  int n_kv_heads;
  int group;
  int head_dim;
};
std::string Name(const Shape& s) {
  return "n_kv=" + std::to_string(s.n_kv_heads) + " G=" + std::to_string(s.group) +
         " D=" + std::to_string(s.head_dim);
}
const Shape kShapes[] = {{2, 1, 64}, {2, 3, 64}, {1, 4, 64}, {2, 1, 128},
                         {2, 3, 128}, {2, 4, 128}, {1, 8, 128}};

// Every tile configuration of the prefill kernel (the default is one of them).
using internal::PrefillVariant;
const PrefillVariant kVariants[] = {PrefillVariant::kDefault, PrefillVariant::kWarps4Occ2,
                                    PrefillVariant::kWarps4Occ3, PrefillVariant::kWarps8,
                                    PrefillVariant::kWarps4Rows32};

// Contiguous varlen: queries and keys of each sequence are dense runs; len_k >= len_q with the
// causal mask aligned bottom-right.
TEST(PrefillAttentionTest, ContiguousVarlen) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  const std::vector<int> lens_q = {1, 17, 64, 65, 130, 7};
  const std::vector<int> extra_k = {0, 0, 0, 3, 0, 40};  // len_k = len_q + extra
  for (const Shape& s : kShapes) {
    const int n_heads = s.n_kv_heads * s.group, d = s.head_dim;
    std::vector<int32_t> cu_q{0}, cu_k{0};
    for (size_t i = 0; i < lens_q.size(); ++i) {
      cu_q.push_back(cu_q.back() + lens_q[i]);
      cu_k.push_back(cu_k.back() + lens_q[i] + extra_k[i]);
    }
    const int total_q = cu_q.back(), total_k = cu_k.back();
    const auto q = RandomBf16(int64_t{total_q} * n_heads * d, rng, -3.0f, 3.0f);
    const auto k = RandomBf16(int64_t{total_k} * s.n_kv_heads * d, rng);
    const auto v = RandomBf16(int64_t{total_k} * s.n_kv_heads * d, rng);
    DeviceBuffer<bf16> d_q(q.bits), d_k(k.bits), d_v(v.bits);
    DeviceBuffer<bf16> d_out(q.bits.size());
    DeviceBuffer<int32_t> d_cu_q(cu_q), d_cu_k(cu_k);
    PrefillAttentionArgs a;
    a.q = d_q.get();
    a.out = d_out.get();
    a.cu_seqlens_q = d_cu_q.get();
    a.n_seqs = static_cast<int>(lens_q.size());
    a.max_seqlen_q = *std::max_element(lens_q.begin(), lens_q.end());
    a.n_heads = n_heads;
    a.n_kv_heads = s.n_kv_heads;
    a.head_dim = d;
    a.scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.k = d_k.get();
    a.v = d_v.get();
    a.cu_seqlens_k = d_cu_k.get();

    std::vector<double> ref(q.values.size());
    const int64_t kv_row = int64_t{s.n_kv_heads} * d;
    for (size_t i = 0; i < lens_q.size(); ++i) {
      const float* kb = &k.values[cu_k[i] * kv_row];
      const float* vb = &v.values[cu_k[i] * kv_row];
      const RowAt k_at = [&](int j) { return kb + j * kv_row; };
      const RowAt v_at = [&](int j) { return vb + j * kv_row; };
      RefAttention(&q.values[int64_t{cu_q[i]} * n_heads * d], lens_q[i], extra_k[i], n_heads,
                   s.n_kv_heads, d, a.scale, k_at, v_at, &ref[int64_t{cu_q[i]} * n_heads * d]);
    }
    for (const PrefillVariant variant : kVariants) {
      ASSERT_CUDA_OK(cudaMemset(d_out.get(), 0xff, d_out.size() * sizeof(bf16)));  // NaNs
      const absl::Status st = variant == PrefillVariant::kDefault
                                  ? PrefillAttention(a, nullptr)
                                  : internal::PrefillAttentionTuned(a, variant, nullptr);
      ASSERT_TRUE(st.ok()) << st;
      SYNC_OR_FAIL();
      ExpectAttentionClose(DownloadBf16(d_out), ref,
                           std::string("contiguous ") + internal::PrefillVariantName(variant) +
                               " " + Name(s));
    }
  }
}

// A paged cache filled on the host: random, shuffled block tables; slot of (seq, pos) =
// table[pos / bs] * bs + pos % bs.
struct HostPagedCache {
  int block_size = 16;
  int n_kv_heads = 0, head_dim = 0;
  int64_t num_blocks = 0;
  int max_blocks_per_seq = 0;
  testing::Bf16Data k, v;             // [num_blocks, block_size, n_kv_heads, head_dim]
  std::vector<int32_t> block_tables;  // [n_seqs, max_blocks_per_seq]

  HostPagedCache(const std::vector<int>& seq_lens, int n_kv, int d, std::mt19937& rng)
      : n_kv_heads(n_kv), head_dim(d) {
    int64_t needed = 0;
    for (int len : seq_lens) {
      const int blocks = (len + block_size - 1) / block_size;
      needed += blocks;
      max_blocks_per_seq = std::max(max_blocks_per_seq, std::max(blocks, 1));
    }
    num_blocks = needed + 3;  // spare blocks stay unreferenced
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    block_tables.assign(seq_lens.size() * max_blocks_per_seq, -1);  // unused entries invalid
    size_t next = 0;
    for (size_t s = 0; s < seq_lens.size(); ++s) {
      for (int b = 0; b < (seq_lens[s] + block_size - 1) / block_size; ++b) {
        block_tables[s * max_blocks_per_seq + b] = ids[next++];
      }
    }
    const int64_t n = num_blocks * block_size * n_kv * d;
    k = RandomBf16(n, rng);
    v = RandomBf16(n, rng);
  }
  const float* Key(const testing::Bf16Data& data, int seq, int pos) const {
    const int64_t slot =
        int64_t{block_tables[seq * max_blocks_per_seq + pos / block_size]} * block_size +
        pos % block_size;
    return &data.values[slot * n_kv_heads * head_dim];
  }
};

// Chunked prefill: each sequence has start_pos earlier tokens in the cache and n_q new ones
// (already written), all read through the block table.
TEST(PrefillAttentionTest, PagedChunked) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  const std::vector<int> start = {0, 5, 100, 37, 0, 250};
  const std::vector<int> n_q = {33, 1, 64, 130, 1, 17};
  std::vector<int> lens;
  for (size_t i = 0; i < start.size(); ++i) lens.push_back(start[i] + n_q[i]);
  for (const Shape& s : kShapes) {
    const int n_heads = s.n_kv_heads * s.group, d = s.head_dim;
    HostPagedCache cache(lens, s.n_kv_heads, d, rng);
    std::vector<int32_t> cu_q{0};
    for (int n : n_q) cu_q.push_back(cu_q.back() + n);
    const int total_q = cu_q.back();
    // q rows with a stride wider than n_heads * d (as in a fused QKV buffer).
    const int64_t q_stride = int64_t{n_heads + 2 * s.n_kv_heads} * d;
    const auto q = RandomBf16(total_q * q_stride, rng, -3.0f, 3.0f);
    DeviceBuffer<bf16> d_q(q.bits), d_out(int64_t{total_q} * n_heads * d);
    DeviceBuffer<bf16> d_kc(cache.k.bits), d_vc(cache.v.bits);
    DeviceBuffer<int32_t> d_cu_q(cu_q), d_tables(cache.block_tables);
    DeviceBuffer<int32_t> d_start(std::vector<int32_t>(start.begin(), start.end()));
    PagedKvCache pc{d_kc.get(), d_vc.get(), cache.num_blocks, cache.block_size, s.n_kv_heads, d};
    PrefillAttentionArgs a;
    a.q = d_q.get();
    a.q_stride = q_stride;
    a.out = d_out.get();
    a.cu_seqlens_q = d_cu_q.get();
    a.n_seqs = static_cast<int>(n_q.size());
    a.max_seqlen_q = *std::max_element(n_q.begin(), n_q.end());
    a.n_heads = n_heads;
    a.n_kv_heads = s.n_kv_heads;
    a.head_dim = d;
    a.scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.cache = &pc;
    a.block_tables = d_tables.get();
    a.max_blocks_per_seq = cache.max_blocks_per_seq;
    a.start_pos = d_start.get();

    std::vector<double> ref(int64_t{total_q} * n_heads * d);
    for (size_t i = 0; i < n_q.size(); ++i) {
      std::vector<float> qd(int64_t{n_q[i]} * n_heads * d);  // dense copy of this run
      for (int t = 0; t < n_q[i]; ++t) {
        std::copy_n(&q.values[(cu_q[i] + t) * q_stride], n_heads * d, &qd[int64_t{t} * n_heads * d]);
      }
      const int seq = static_cast<int>(i);
      const RowAt k_at = [&](int j) { return cache.Key(cache.k, seq, j); };
      const RowAt v_at = [&](int j) { return cache.Key(cache.v, seq, j); };
      RefAttention(qd.data(), n_q[i], start[i], n_heads, s.n_kv_heads, d, a.scale, k_at, v_at,
                   &ref[int64_t{cu_q[i]} * n_heads * d]);
    }
    for (const PrefillVariant variant : kVariants) {
      ASSERT_CUDA_OK(cudaMemset(d_out.get(), 0xff, d_out.size() * sizeof(bf16)));  // NaNs
      const absl::Status st = variant == PrefillVariant::kDefault
                                  ? PrefillAttention(a, nullptr)
                                  : internal::PrefillAttentionTuned(a, variant, nullptr);
      ASSERT_TRUE(st.ok()) << st;
      SYNC_OR_FAIL();
      ExpectAttentionClose(DownloadBf16(d_out), ref,
                           std::string("paged ") + internal::PrefillVariantName(variant) + " " +
                               Name(s));
    }
  }
}

void RunDecodeCase(const Shape& s, const std::vector<int>& lens, std::mt19937& rng) {
  const int n_heads = s.n_kv_heads * s.group, d = s.head_dim;
  const int batch = static_cast<int>(lens.size());
  HostPagedCache cache(lens, s.n_kv_heads, d, rng);
  const auto q = RandomBf16(int64_t{batch} * n_heads * d, rng, -3.0f, 3.0f);
  DeviceBuffer<bf16> d_q(q.bits), d_out(q.bits.size());
  DeviceBuffer<bf16> d_kc(cache.k.bits), d_vc(cache.v.bits);
  DeviceBuffer<int32_t> d_lens(std::vector<int32_t>(lens.begin(), lens.end()));
  DeviceBuffer<int32_t> d_tables(cache.block_tables);
  PagedKvCache pc{d_kc.get(), d_vc.get(), cache.num_blocks, cache.block_size, s.n_kv_heads, d};
  DecodeAttentionArgs a;
  a.q = d_q.get();
  a.out = d_out.get();
  a.seq_lens = d_lens.get();
  a.block_tables = d_tables.get();
  a.max_blocks_per_seq = cache.max_blocks_per_seq;
  a.batch = batch;
  a.max_seq_len = *std::max_element(lens.begin(), lens.end());
  a.n_heads = n_heads;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  const size_t ws = DecodeAttentionWorkspaceBytes(a, pc);
  DeviceBuffer<unsigned char> d_ws(ws);
  a.workspace = ws > 0 ? d_ws.get() : nullptr;
  a.workspace_bytes = ws;
  const absl::Status st = DecodeAttention(a, pc, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  SYNC_OR_FAIL();

  std::vector<double> ref(q.values.size(), 0.0);
  for (int b = 0; b < batch; ++b) {
    if (lens[b] == 0) continue;  // zero output
    const RowAt k_at = [&](int j) { return cache.Key(cache.k, b, j); };
    const RowAt v_at = [&](int j) { return cache.Key(cache.v, b, j); };
    // One query at position len - 1 sees keys [0, len).
    RefAttention(&q.values[int64_t{b} * n_heads * d], 1, lens[b] - 1, n_heads, s.n_kv_heads, d,
                 a.scale, k_at, v_at, &ref[int64_t{b} * n_heads * d]);
  }
  std::string lens_str;
  for (int l : lens) lens_str += std::to_string(l) + ",";
  ExpectAttentionClose(DownloadBf16(d_out), ref,
                       "decode " + Name(s) + " lens=" + lens_str + " ws=" + std::to_string(ws));
}

// Mixed lengths: short ones, block-boundary ones, a zero-length one and long ones that need
// several partitions (the split and merge path).
TEST(DecodeAttentionTest, SplitContexts) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (const Shape& s : kShapes) {
    RunDecodeCase(s, {1, 16, 17, 300, 1000, 3001, 0, 64}, rng);
  }
}

// Large batches: short contexts fit one partition (the kernel writes the output directly);
// longer ones split into full 512-key partitions.
TEST(DecodeAttentionTest, LargeBatch) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (const int max_len : {64, 2000}) {
    std::vector<int> lens(max_len == 64 ? 600 : 40);
    std::uniform_int_distribution<int> len_dist(1, max_len);
    for (auto& l : lens) l = len_dist(rng);
    for (const Shape& s : {Shape{8, 4, 128}, Shape{3, 3, 64}}) RunDecodeCase(s, lens, rng);
  }
}

}  // namespace
}  // namespace tandem::cuda
